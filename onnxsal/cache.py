"""The on-disk cache of built attribution graphs: a process that explains one image pays the graph
build and ONNX Runtime's graph optimisation once per model and configuration, not every time.

An entry is a folder `graphs/<key>/` holding `graph.onnx` (the attribution graph, as ONNX Runtime
optimised it for this machine when it runs on the CPU) and `entry.json` (what running it needs:
input and output names, the image input, preprocessing, class names). The key hashes

- the model's content (sha256; a stat index spares rehashing a file whose size, mtime, ctime and
  inode are unchanged; files holding external data are checked by their stat when read back),
- the configuration (method, options, target kind, softmax, modifier, size, preprocessing),
- the machine: onnxsal's and onnxruntime's versions, the providers and the CPU's flags (an
  optimised graph holds layouts chosen for this CPU, so a cache shared between hosts stays apart).

Reading an entry back imports neither onnx nor the graph builder, which is what makes a warm start
cheap. Entries are written into a temporary folder and renamed into place, so a reader sees a whole
entry or none and concurrent writers of one key leave one; an entry that does not read back
(truncated, wrong size, unparsable, refused by ONNX Runtime, a source file changed) is removed and
rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

FORMAT = 1  # bump when the layout of an entry changes
GRAPH = "graph.onnx"
MANIFEST = "entry.json"
ENV = "ONNXSAL_CACHE_DIR"


def default_dir() -> Path:
    """$ONNXSAL_CACHE_DIR, else $XDG_CACHE_HOME/onnxsal, else ~/.cache/onnxsal."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxsal"


def _stat_record(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), else the processor's name: what optimised kernels depend on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def machine_signature(providers: list) -> dict:
    """What an optimised graph depends on besides the model and the method."""
    import onnxruntime as ort

    from . import __version__

    return {"onnxsal": __version__, "onnxruntime": ort.__version__, "providers": [str(p) for p in providers],
            "machine": platform.machine(), "cpu": hashlib.sha256(_cpu_flags().encode()).hexdigest()[:16]}


def _write_json_atomic(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Entry:
    """A cached graph read back: its folder and its manifest (`entry.json`)."""

    folder: Path
    manifest: dict

    @property
    def graph_path(self) -> Path:
        return self.folder / GRAPH


class GraphCache:
    """Built attribution graphs on disk, under `root` (default: `default_dir()`)."""

    def __init__(self, root=None):
        self.root = Path(root) if root is not None else default_dir()

    # -- keys -------------------------------------------------------------------------------------
    def digest(self, path) -> str:
        """sha256 of the file at `path`, remembered by its stat so an unchanged file is not reread."""
        path = Path(path).resolve()
        record = _stat_record(path)
        index = self.root / "digests" / (hashlib.sha256(str(path).encode()).hexdigest() + ".json")
        known = _read_json(index)
        if known is not None and known.get("stat") == record and isinstance(known.get("sha256"), str):
            return known["sha256"]
        digest = _sha256(path)
        if _stat_record(path) == record:  # not rewritten while it was read
            try:
                _write_json_atomic({"path": str(path), "stat": record, "sha256": digest}, index)
            except OSError:
                pass  # a read-only cache still answers, it just rehashes
        return digest

    def key(self, model_path, config: dict, providers: list) -> str:
        """The entry key of `config` for the model at `model_path` on this machine with `providers`."""
        material = {"format": FORMAT, "model": self.digest(model_path), "config": config,
                    "machine": machine_signature(providers)}
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=repr).encode()).hexdigest()

    def folder(self, key: str) -> Path:
        return self.root / "graphs" / key

    # -- reading ----------------------------------------------------------------------------------
    def load(self, key: str) -> Entry | None:
        """The entry of `key` when it is whole and its sources are unchanged; a broken one is removed."""
        folder = self.folder(key)
        if not folder.is_dir():
            return None
        manifest = _read_json(folder / MANIFEST)
        if manifest is None or manifest.get("format") != FORMAT or not self._intact(folder, manifest):
            self.discard(key)
            return None
        return Entry(folder, manifest)

    @staticmethod
    def _intact(folder: Path, manifest: dict) -> bool:
        try:
            if (folder / GRAPH).stat().st_size != manifest.get("graph_size"):
                return False
            return all(_stat_record(Path(s["path"])) == s["stat"] for s in manifest.get("sources", []))
        except (OSError, KeyError, TypeError):
            return False

    def discard(self, key: str) -> None:
        """Remove an entry (a broken one, or one ONNX Runtime refused); a missing one is no error."""
        folder = self.folder(key)
        trash = folder.with_name(f".{key}.{os.getpid()}.trash")
        try:
            os.replace(folder, trash)  # out of the readers' way in one step, then deleted at leisure
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # -- writing ----------------------------------------------------------------------------------
    def staging(self) -> Path:
        """A fresh private folder to build an entry in (graph.onnx goes there), then `commit` it."""
        parent = self.root / "graphs"
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=".staging-"))

    def commit(self, key: str, staging: Path, manifest: dict, sources: list[Path] = ()) -> Entry | None:
        """Move a staged entry into place under `key`. When another process put one there first, its
        entry is kept and ours is dropped. Returns the entry in place, None when staging failed."""
        try:
            manifest = dict(manifest, format=FORMAT, graph_size=(staging / GRAPH).stat().st_size,
                            sources=[{"path": str(Path(p).resolve()), "stat": _stat_record(Path(p))} for p in sources])
            _write_json_atomic(manifest, staging / MANIFEST)
            if not self.folder(key).exists():
                os.replace(staging, self.folder(key))
        except OSError:
            pass  # another process committed this key first (its entry stays), or the disk refused
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after a rename; left over after a lost race
        return self.load(key)
