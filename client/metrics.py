"""The names of the metrics a client reports, and that the coordinator, its reports and
the benchmarks read back: one spelling each, here. (The record keys of a reply are in
client/task.py.)"""

from __future__ import annotations

# Train reply (MetricRecord under METRICS_KEY), besides NUM_EXAMPLES
TRAIN_LOSS = "train-loss"  # mean loss over the last local epoch
TRAIN_SECONDS = "train-seconds"
PARTITION_ID = "partition-id"
SHARED_ACC = "shared-acc"  # local validation accuracy of theta before training
DEVICE_CUDA = "device-cuda"  # 1 if the node trained on a GPU
# Train (personal mode) and evaluate replies
PERSONAL_ACC = "personal-acc"  # of theta + theta_i on the client's own validation split
PERSONAL_LOSS = "personal-loss"
# Evaluate reply
EVAL_LOSS = "eval-loss"  # of theta on the client's own validation split
EVAL_ACC = "eval-acc"
# Train reply in folded mode (federated-evaluation = "folded"), besides the EVAL_* keys:
# the evaluation of the theta received, made before training
EVAL_NUM_EXAMPLES = "eval-num-examples"  # the validation split's size
EVAL_PERSONAL_ACC = "eval-personal-acc"  # personal mode: of theta + the kept theta_i
EVAL_PERSONAL_LOSS = "eval-personal-loss"

# What the coordinator adds to a round's aggregate train metrics
NUM_CLIENTS = "num-clients"
DP_EPSILON = "dp-epsilon"  # dp central: the user-level epsilon spent after the round

TRAIN_MEANS = (TRAIN_LOSS, SHARED_ACC, PERSONAL_ACC)
"""The train metrics the coordinator averages over a round's merged clients (by examples)."""
