"""Event files say which commit of mimlsort measured them (feature definitions change between
commits of one version)."""

import shutil
import subprocess

import pytest

from mimlsort import __version__
from mimlsort.provenance import describe

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@localhost", *args], check=True,
                   capture_output=True)


def test_a_checkout_is_described_by_its_commit_and_its_changes(tmp_path):
    assert describe(tmp_path) == f"mimlsort {__version__}"  # not a checkout (an installed wheel)
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    _git(tmp_path, "tag", "v9")  # a tag does not replace the commit
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert describe(tmp_path) == f"mimlsort {__version__}+g{head[:12]}"
    (tmp_path / "a.py").write_text("x = 2\n")
    assert describe(tmp_path) == f"mimlsort {__version__}+g{head[:12]}.dirty"


def test_the_event_file_carries_it(tmp_path):
    import h5py

    from app.storage import EventWriter, RunMeta
    from mimlsort.provenance import software_version

    with EventWriter(tmp_path / "e.rtdc", meta=RunMeta(pixel_size_um=0.5, fps=4000.0, roi=(40, 20))):
        pass
    with h5py.File(tmp_path / "e.rtdc", "r") as f:
        assert f.attrs["setup:software version"] == software_version()
    assert software_version().startswith(f"mimlsort {__version__}")


def test_a_raw_recording_carries_it(tmp_path):
    # the recorder (simulate --out, output.record_raw) wrote the plain version
    import h5py

    from acquisition.recording import RawRecorder
    from mimlsort.provenance import software_version

    with RawRecorder(tmp_path / "r.rtdc", 40, 20, pixel_size_um=0.5, fps=4000.0):
        pass
    with h5py.File(tmp_path / "r.rtdc", "r") as f:
        assert f.attrs["setup:software version"] == software_version()


def test_the_command_line_says_it(capsys):
    from app.cli import main
    from mimlsort.provenance import software_version

    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0 and capsys.readouterr().out.strip() == software_version()
