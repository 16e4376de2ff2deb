"""The deployment walkthrough of README.md and docs/deployment.md, run as written.

Both files mark it with ``<!-- docs-test: loopback-walkthrough -->`` before a bash block;
the blocks must be the same, and this runs it with bash from a scratch directory. Three
things are the test's, not the text's: ``FEDMERGE_APP=`` points at this checkout, the
ports 8000 and 8080 become free ones, and ``FLWR_HOME`` is the scratch directory's. The
``&`` lines (a terminal each, in the docs) run in the background and are killed at the
end, found by a tag in their environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedmerge.deploy.procs import free_port
from tests.deploy.cluster import TAG, LocalCluster

pytestmark = pytest.mark.deployment

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- docs-test: loopback-walkthrough -->"


def walkthrough(path: Path) -> str:
    text = path.read_text()
    assert MARKER in text, f"{path.name} lost its tested walkthrough"
    block = re.search(re.escape(MARKER) + r"\s*```bash\n(.*?)```", text, re.S)
    assert block, f"{path.name}: no bash block after the marker"
    return block.group(1)


def test_docs_and_readme_share_one_walkthrough() -> None:
    assert walkthrough(REPO / "README.md") == walkthrough(REPO / "docs" / "deployment.md")


@pytest.mark.timeout(480)  # a cold coordinator, two workers, a 2-round run, on 2 cores
def test_the_walkthrough_runs_as_written(cluster: LocalCluster) -> None:
    script = walkthrough(REPO / "docs" / "deployment.md")
    assert re.search(r"^FEDMERGE_APP=\S+", script, re.M)
    script = re.sub(r"^FEDMERGE_APP=\S+", f"FEDMERGE_APP={REPO}", script, count=1, flags=re.M)
    port, dash = free_port(), free_port()
    script = script.replace(":8000", f":{port}").replace("8080", str(dash))
    script = script.replace("fedmerge coordinator ", f"fedmerge coordinator --port {port} ", 1)
    env = {k: v for k, v in cluster.env.items()
           if k not in ("FEDMERGE_HOME", "FEDMERGE_DB_URL", "FEDMERGE_OPERATOR_TOKEN")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    scratch = cluster.root / "scratch"
    scratch.mkdir()
    log = cluster.root / "walkthrough.log"
    with open(log, "wb") as out:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=scratch, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=420,
                              start_new_session=True)
    said = log.read_text(errors="replace")
    assert cluster.tag == env[TAG]
    assert done.returncode == 0, said + _logs(scratch / "trial")
    assert "finished:completed" in said, said
    store_id = re.search(r"store run id ([0-9a-f]{32})", said)
    assert store_id, said
    for number in (1, 2):  # `show`: the round, both workers' updates merged
        assert re.search(rf"│ {number}\s+│ 2\s+│ 0\s+│", said), said
    exported = sorted(p.name for p in (scratch / "trial" / "export").iterdir())
    stem = f"fedmerge-{store_id.group(1)[:8]}"
    assert exported == [f"{stem}-history.csv", f"{stem}-history.json", f"{stem}-model.safetensors"]
    home = scratch / "trial"
    for private in (home / "operator.token", home / "superlink" / "state.db"):
        assert private.stat().st_mode & 0o777 == 0o600, private


def _logs(home: Path) -> str:
    parts = []
    for p in sorted(home.glob("**/logs/*.log")):
        parts.append(f"--- {p} ---\n{p.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)
