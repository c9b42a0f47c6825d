"""Team sharing over a real network remote: an SFTP server on localhost (asyncssh, the library under dvc-ssh),
`dvc push` / `dvc pull` through dvc-ssh, the run-cache shared between two clones, selective pulls, and a sweep on
DVC's experiment queue. No mocks: every transfer goes through SSH to the server's folder."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import run_stage, set_params, snapshot
from tests.test_pipeline import ENV, ran, sh

pytestmark = pytest.mark.slow
SMALL = {"distill.methods.selection": ["random"], "distill.methods.distribution": [], "distill.methods.masked": [],
         "distill.ipcs": [1], "evaluate.repeats": 1, "evaluate_full.epochs": 1}  # tiny_params, one cheap run
ANNOTATION_AND_FEATURE_STAGES = ("tag", "ground", "caption", "describe", "embed_image", "embed_text")


@dataclass
class Sftp:
    root: Path       # the server's folder: what clients see as "/"
    url: str         # ssh://user@127.0.0.1:port/dvc-cache
    keyfile: Path    # the client's private key (its public half is the server's only authorised key)


@pytest.fixture(scope="module")
def sftp(tmp_path_factory):
    """A real SFTP server on localhost: generated host key, one authorised client key, running in a thread."""
    base = tmp_path_factory.mktemp("sftp")
    root = base / "server"
    root.mkdir()
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    keyfile = base / "id_ed25519"
    client_key.write_private_key(str(keyfile))
    keyfile.chmod(0o600)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def listen():
        return await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
            sftp_factory=lambda channel: asyncssh.SFTPServer(channel, chroot=str(root)), allow_scp=False)

    server = asyncio.run_coroutine_threadsafe(listen(), loop).result(30)
    port = server.sockets[0].getsockname()[1]
    yield Sftp(root, f"ssh://teammate@127.0.0.1:{port}/dvc-cache", keyfile)
    server.close()
    asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, annotated_template, sftp) -> Path:
    """The tiny project with one method at one IPC, every stage's outputs made by the stage entry points
    (in-process, as conftest's annotated_template), recorded by `dvc commit`, in git, and pushed over SSH."""
    root = tmp_path_factory.mktemp("shared") / "project"
    shutil.copytree(annotated_template, root, symlinks=True)
    set_params(root, **SMALL)  # no stage of the annotated template reads distill.*
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run_stage("selection")
        run_stage("distill", "--method", "random", "--ipc", "1")
        run_stage("evaluate", "--method", "random", "--ipc", "1")
        run_stage("evaluate", "--full")
        run_stage("report")
    finally:
        os.chdir(cwd)
    (root / ".gitignore").write_text("/data/\n__pycache__/\n")
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "commit", "-f", "-q")
    sh(root, "dvc", "remote", "add", "-d", "shared", sftp.url)
    # a team keeps each member's key out of git (`dvc remote modify --local`, README); here all share one key
    sh(root, "dvc", "remote", "modify", "shared", "keyfile", str(sftp.keyfile))
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "tiny pipeline")
    sh(root, "dvc", "push")
    return root


def clone(shared: Path, dest: Path) -> Path:
    """A teammate's fresh git clone: no data."""
    sh(dest.parent, "git", "clone", "-q", str(shared), str(dest))
    return dest


def test_clone_pulls_everything_over_ssh(shared, sftp, tmp_path):
    stored = [p for p in (sftp.root / "dvc-cache/files/md5").rglob("*") if p.is_file()]
    assert stored  # the push wrote into the SFTP server's folder
    teammate = clone(shared, tmp_path / "teammate")
    assert not (teammate / "data").exists()
    sh(teammate, "dvc", "pull")
    assert snapshot(teammate, ("data",)) == snapshot(shared, ("data",))
    assert json.loads(sh(teammate, "dvc", "status", "--json")) == {}  # nothing to reproduce


def test_selective_pull_of_annotations_and_features(shared, tmp_path):
    teammate = clone(shared, tmp_path / "teammate")
    sh(teammate, "dvc", "pull", *ANNOTATION_AND_FEATURE_STAGES)
    pulled = snapshot(teammate, ("data",))
    assert {"/".join(Path(path).parts[1:3]) for path in pulled} == {
        "annotations/tags.parquet", "annotations/instances.parquet", "annotations/captions.parquet",
        "annotations/descriptions.parquet", "annotation_cache/tag", "annotation_cache/ground",
        "annotation_cache/caption", "annotation_cache/describe", "features/image", "features/instance",
        "features/caption", "features/description"}  # not prepared/, forgetting/, selections/, distilled/
    everything = snapshot(shared, ("data",))
    assert all(everything[path] == digest for path, digest in pulled.items())


def without_python(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose `python` (the stage commands') only leaves a marker file and fails."""
    shim, marker = tmp_path / "shim", tmp_path / "a stage command ran"
    shim.mkdir()
    (shim / "python").write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n")
    (shim / "python").chmod(0o755)
    return dict(ENV, PATH=f"{shim}:{ENV['PATH']}"), marker


def test_run_cache_shared_between_teammates(shared, sftp, tmp_path):
    """prepare's outputs are all cached, so DVC keeps a run-cache entry for it (a stage with a plain
    `cache: false` output, as evaluate's record or a figure, gets none: README, "Team sharing")."""
    first = clone(shared, tmp_path / "first")
    set_params(first, **{"prepare.val_per_class": 1})  # the committed tiny params have 2
    assert ran(sh(first, "dvc", "repro", "prepare")) == {"prepare"}
    sh(first, "dvc", "push", "--run-cache")
    assert list((sftp.root / "dvc-cache/runs").rglob("*"))  # the entry went to the server

    second = clone(shared, tmp_path / "second")
    env, marker = without_python(tmp_path)
    # --pull: the run-cache entries and the outputs they name (`dvc pull --run-cache` fetches the entries only)
    result = subprocess.run(["dvc", "exp", "run", "--pull", "-S", "prepare.val_per_class=1", "prepare"], cwd=second, env=env,
                            capture_output=True, text=True)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and not marker.exists() and ran(out) == set(), out[-3000:]
    assert "Stage 'prepare' is cached - skipping run, checking out outputs" in out
    prepared = snapshot(second, ("data/prepared",))
    assert prepared == snapshot(first, ("data/prepared",)) != snapshot(shared, ("data/prepared",))


def test_sweep_on_the_queue(shared, tmp_path):
    teammate = clone(shared, tmp_path / "teammate")
    sh(teammate, "dvc", "pull")
    # a sweep (one experiment per value: sweep-1, sweep-2) of one stage, whose metrics file exp show reads
    sh(teammate, "dvc", "exp", "run", "--queue", "-n", "sweep", "-S", "evaluate.epochs=1,3", "evaluate_selection@random-1")
    sh(teammate, "dvc", "queue", "start", "-j", "1")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # each finished experiment gets a git ref named after it
        refs = sh(teammate, "git", "for-each-ref", "--format=%(refname)", "refs/exps").split()
        if {"sweep-1", "sweep-2"} <= {ref.rsplit("/", 1)[-1] for ref in refs} or "refs/exps/celery/failed" in refs:
            break
        time.sleep(2)
    status = sh(teammate, "dvc", "queue", "status")
    assert status.count("Success") == 2, status
    shown = json.loads(sh(teammate, "dvc", "exp", "show", "--json"))
    runs = {rev["name"]: rev["data"] for baseline in shown for exp in baseline.get("experiments") or []
            for rev in exp["revs"]}
    assert set(runs) == {"sweep-1", "sweep-2"}
    assert sorted(data["params"]["params.yaml"]["data"]["evaluate"]["epochs"] for data in runs.values()) == [1, 3]
    for data in runs.values():
        accuracy = data["metrics"]["outputs/metrics/random-ipc1.json"]["data"]["convnet3"]["test_accuracy_mean"]
        assert 0 <= accuracy <= 100
