"""Running fedmerge on real machines: the coordinator service (SuperLink and dashboard),
workers (SuperNodes), run submission and the warm ClientApp executor."""
