"""The artifact folder: what tcc writes into it, what it may replace, and checking what is loaded.

An artifact (format `tcc-artifact-2`) is `manifest.json` plus the files its "files" map lists, each with its
size and SHA-256. Loading checks the format version, the tcc version and every listed file before anything is
mapped or dlopened (a truncated `libmodel.so` would otherwise kill the process with SIGBUS), so a damaged or
edited artifact is a one-line error. The weights file is the one large file: its hash is remembered per
(path, size, mtime, ctime, inode) in the cache folder, so an unchanged artifact is hashed once, and any write
to it (which moves mtime and ctime) makes the next load hash it again.

Writing never deletes what tcc did not write: a folder that holds other files is refused unless the user
asks (`--force`), and then only the artifact's own files are replaced, the manifest last.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat

from ..errors import TccError

FORMAT = "tcc-artifact-2"
MANIFEST = "manifest.json"
# Files tcc writes into an artifact after the manifest (not checksummed, never the user's).
LOCAL_FILES = (".tcc-cache-key",)
# What a tcc-artifact-1 folder held (its manifest lists no files): replacing one keeps everything else.
FORMAT1_FILES = ("libmodel.so", "run", "chat", "weights.bin", "chat.json", "src", "tokenizer.json",
                 "tokenizer_config.json", "generation_config.json", "chat_template.jinja", "config.json")
_HASH_BLOCK = 1 << 22


class ArtifactError(TccError):
    """The artifact is damaged, incomplete, of another format, or from a newer tcc (exit code 2)."""

    exit_code = 2


# -- hashing -----------------------------------------------------------------------------------------

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def describe(folder: str, names) -> dict[str, dict]:
    """The manifest's "files" map for `names` inside `folder`: bytes and sha256 of each."""
    return {name: {"bytes": os.path.getsize(os.path.join(folder, name)),
                   "sha256": sha256_file(os.path.join(folder, name))} for name in sorted(names)}


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def _stamp_path(key: str) -> str:
    from .. import flags

    return os.path.join(flags.get("cache-dir"), "verified", hashlib.sha256(key.encode()).hexdigest()[:32])


def _cached_digest(path: str) -> str:
    """sha256 of a large file, remembered for the file's exact stat (a changed file is hashed again)."""
    key = _stat_key(path)
    stamp = _stamp_path(key)
    try:
        with open(stamp, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("key") == key and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    try:  # best effort: a read-only cache only costs the hash next time
        os.makedirs(os.path.dirname(stamp), exist_ok=True)
        tmp = f"{stamp}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "sha256": digest}, f)
        os.replace(tmp, stamp)
    except OSError:
        pass
    return digest


# -- reading -----------------------------------------------------------------------------------------

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def _version_tuple(text) -> tuple[int, int, int] | None:
    m = _VERSION.match(text) if isinstance(text, str) else None
    return tuple(int(g) for g in m.groups()) if m else None


def check_format(manifest: dict, mpath: str) -> None:
    """Refuse manifests of another artifact format or of a newer (or unknown) tcc, in one line."""
    from .. import __version__

    fmt = manifest.get("format")
    if fmt != FORMAT:
        got = fmt if isinstance(fmt, str) else "none"
        raise ArtifactError(f"{mpath}: artifact format {got!r} is not {FORMAT!r}, the one this tcc {__version__} "
                            "reads: recompile the model with this tcc")
    made = _version_tuple(manifest.get("tcc_version"))
    if made is None:
        raise ArtifactError(f"{mpath}: tcc_version {manifest.get('tcc_version')!r} is not a tcc version")
    if made > _version_tuple(__version__):
        raise ArtifactError(f"{mpath}: compiled by tcc {manifest['tcc_version']}, newer than this tcc "
                            f"{__version__}: upgrade tcc or recompile")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{mpath}: the manifest lists no files and checksums")
    for name, entry in files.items():
        if (not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", "..")
                or not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int)
                or not isinstance(entry.get("sha256"), str)):
            raise ArtifactError(f"{mpath}: malformed files entry {name!r}")


def verify(path: str, manifest: dict, names=None, hashes: bool = True, remembered: bool = True) -> list[str]:
    """Check the listed files (all, or `names`): present, regular, of the listed size and (with `hashes`)
    SHA-256; `remembered=False` hashes large files even when their digest is remembered (`tcc info`).
    Raises ArtifactError on the first problem; returns the names checked."""
    files = manifest["files"]
    checked = []
    for name in names if names is not None else sorted(files):
        entry = files.get(name)
        if entry is None:
            raise ArtifactError(f"{path}: the manifest lists no {name} (the artifact is incomplete: recompile it)")
        fpath = os.path.join(path, name)
        try:
            st = os.stat(fpath)
        except OSError as e:
            raise ArtifactError(f"{fpath}: {e.strerror} (the artifact is incomplete: recompile it)") from None
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{fpath} is not a regular file")
        if st.st_size != entry["bytes"]:
            raise ArtifactError(f"{fpath} has {st.st_size} bytes, the manifest says {entry['bytes']} "
                                "(truncated or replaced: recompile the model)")
        if hashes:
            digest = _cached_digest(fpath) if remembered and st.st_size >= (64 << 20) else sha256_file(fpath)
            if digest != entry["sha256"]:
                raise ArtifactError(f"{fpath} is damaged: its SHA-256 differs from the manifest's (recompile the "
                                    "model, or copy the artifact again)")
        checked.append(name)
    return checked


# -- writing -----------------------------------------------------------------------------------------

def _own_names(folder: str) -> set[str] | None:
    """The names a previous tcc wrote into `folder` (None: it holds no tcc artifact)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or not str(old.get("format", "")).startswith("tcc-artifact-"):
        return None
    files = old.get("files")
    names = set(files) if isinstance(files, dict) else set(FORMAT1_FILES)
    return names | {MANIFEST, *LOCAL_FILES}


def plan_replacement(out_dir: str, new_names, force: bool) -> tuple[str, set[str]]:
    """How to write an artifact into `out_dir`: ("new", {}) when it does not exist or is empty,
    ("swap", {}) when it holds only an earlier artifact's files (the folder is replaced as a whole, which
    is atomic), ("merge", stale) when other files must be kept: the artifact's files are replaced one by
    one and `stale` (an earlier artifact's files the new one lacks) removed. Refuses what would lose files."""
    if not os.path.exists(out_dir):
        return "new", set()
    if not os.path.isdir(out_dir):
        raise TccError(f"output path {out_dir} exists and is not a directory")
    entries = set(os.listdir(out_dir))
    if not entries:
        return "new", set()
    own = _own_names(out_dir)
    others = entries - (own or set())
    if own is not None and not others:
        return "swap", set()
    if not force:
        what = "a tcc artifact with other files in it" if own is not None else "not a tcc artifact"
        listed = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        raise TccError(f"output folder {out_dir} is {what} ({listed}): compile into a new folder, or pass "
                       "--force to write the artifact's files into it and keep the others")
    clash = sorted(set(new_names) & others)
    if clash:
        raise TccError(f"output folder {out_dir} already holds {', '.join(clash)}, which tcc did not write and "
                       "the artifact needs: move them, or compile into a new folder")
    return "merge", (own or set()) - set(new_names) - {MANIFEST, *LOCAL_FILES}


def write_artifact(out_dir: str, files: dict[str, str], weights, manifest: dict,
                   texts: dict[str, str] | None = None, force: bool = False) -> None:
    """Write the artifact beside `out_dir`, list its files with their checksums in the manifest, then put
    it in place (plan_replacement says how, so that no file of the user's is lost).
    `files` maps artifact names to paths to copy (directories too); `texts` artifact names to contents."""
    out_dir = os.path.abspath(out_dir)
    texts = texts or {}
    names = {*files, "weights.bin", *texts}
    mode, stale = plan_replacement(out_dir, names, force)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, src in files.items():
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, name))
            else:
                shutil.copy2(src, os.path.join(tmp, name))
        if isinstance(weights, (bytes, bytearray)):
            with open(os.path.join(tmp, "weights.bin"), "wb") as f:
                f.write(weights)
        else:  # a WeightsBlob (codegen/weights.py): copied from its file, never whole in memory
            weights.write_to(os.path.join(tmp, "weights.bin"))
        for name, text in texts.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        manifest["files"] = describe(tmp, [n for n in names if os.path.isfile(os.path.join(tmp, n))])
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        if mode == "merge":
            _merge_into(tmp, out_dir, names, stale)
        else:
            _swap_into(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TccError(f"cannot write the artifact {out_dir}: {e.strerror or e} ({e.filename or out_dir}); "
                       "an artifact already there is unchanged") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into(tmp: str, out_dir: str) -> None:
    """Replace the whole folder (it held nothing but an earlier artifact): two renames, atomic."""
    old = f"{out_dir}.old-{os.getpid()}"
    moved = os.path.exists(out_dir)
    if moved:
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if moved:  # put the earlier artifact back: the error must leave it as it was
            os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _merge_into(tmp: str, out_dir: str, names: set[str], stale: set[str]) -> None:
    """Replace the artifact's files one by one in a folder that also holds the user's files. The old
    manifest goes first and the new one last, so an interrupted merge leaves a folder that load refuses
    ("no manifest.json") rather than a mix that loads."""
    for name in (MANIFEST, *sorted(stale)):
        victim = os.path.join(out_dir, name)
        if os.path.isdir(victim) and not os.path.islink(victim):
            shutil.rmtree(victim)
        elif os.path.lexists(victim):
            os.unlink(victim)
    for name in sorted(names):
        dst = os.path.join(out_dir, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(os.path.join(tmp, name), dst)
    os.replace(os.path.join(tmp, MANIFEST), os.path.join(out_dir, MANIFEST))
    shutil.rmtree(tmp, ignore_errors=True)
