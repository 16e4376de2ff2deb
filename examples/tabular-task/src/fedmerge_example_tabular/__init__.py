"""A tabular classifier as a fedmerge task: ``task = "fedmerge_example_tabular:TabularTask"``."""

from fedmerge_example_tabular.task import TabularSettings, TabularTask

__all__ = ["TabularSettings", "TabularTask"]
