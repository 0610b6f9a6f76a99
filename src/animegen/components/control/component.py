"""KFP components that steer the DAG: ``plan`` (which optional branches run) and ``skip`` (what a branch that a
parameter turned off leaves for the report). Both are trivial and run on the CPU image."""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from animegen.components.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan(run_manga: bool, run_character: bool, run_baselines: bool, run_dcgan: bool) -> NamedTuple(
        "Branches", [("manga", bool), ("manga_scratch", bool), ("character", bool), ("character_scratch", bool),
                     ("cross_fid", bool), ("dcgan", bool)]):
    """The branches that run, from the run_* parameters. A dsl.If condition compares one value; the branches that
    need two switches (a baseline needs its transfer set, the cross-dataset FID needs both sets) test these."""
    from collections import namedtuple

    from animegen.run_layout import branches

    on = branches(run_manga=run_manga, run_character=run_character, run_baselines=run_baselines,
                  run_dcgan=run_dcgan)
    print("branches:", ", ".join(f"{k}={'on' if v else 'off'}" for k, v in on.items()))
    return namedtuple("Branches", list(on))(**on)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def skip(branch: str, reason: str, dataset: Output[Dataset], metrics: Output[Metrics]):
    """Stands in for a branch that did not run (the Else side of its dsl.If): the report reads ``metrics``
    ({"skipped": reason}) and lists the branch as skipped; ``dataset`` is an empty placeholder (never trained on:
    every consumer of a branch's dataset sits behind the same switch)."""
    from animegen.eval.report import write_skipped

    write_skipped(branch, reason, dataset.path, metrics.path)
    print(f"branch {branch} skipped: {reason}")
