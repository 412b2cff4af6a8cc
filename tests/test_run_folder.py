"""The run folder a stage is given: one stage at a time, and never a folder of someone else's files. Through real
torchrun processes with gloo."""
from __future__ import annotations

import os
import socket

import pytest

from curvenet_dist.engine.run_folder import lock_run_folder
from tests.conftest import QUICKSTART, TINY, assert_clean_error, torchrun

pytestmark = pytest.mark.slow


def probe(run_dir, nproc=1):
    return torchrun("probe.py", nproc, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY], check=False)


def test_a_folder_in_use_stops_every_rank_of_a_second_stage_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    held = lock_run_folder(run_dir)
    result = probe(run_dir, nproc=2)
    assert_clean_error(result, f"run.dir={run_dir}: another run is using this folder (pid {os.getpid()} on "
                               f"{socket.gethostname()} since ")
    # Both ranks stop on the error itself: neither is left to find its peer gone.
    assert result.stderr.count(f"traceback : error: run.dir={run_dir}: another run") == 2, result.stderr
    assert "another process of the job ended" not in result.stderr
    assert sorted(path.name for path in run_dir.iterdir()) == ["run.lock"], "the second stage wrote nothing"
    held.close()


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "photos").mkdir()
    assert_clean_error(probe(folder), f"run.dir={folder}: the folder holds other files (notes.txt, photos) and is "
                                      f"not a run folder; choose a new or empty folder")
    assert sorted(path.name for path in folder.iterdir()) == ["notes.txt", "photos"]
    assert (folder / "notes.txt").read_text() == "my notes\n"
