"""Omniglot loading: zips (or extracted folders) -> one decoded, memory-mapped cache per set.

The first load of a set decodes every PNG once and writes ``<set>-<key>.npy`` (uint8 images, 255 = white
background) and ``<set>-<key>.json`` (per-image alphabet, character, drawer, relative path, md5 of the PNG bytes)
into the cache directory. Later loads memory-map the ``.npy``, so simulation workers never decode PNGs again.
The cache is rebuilt when the source changes (md5 of the zip, or names/sizes/mtimes of an extracted folder).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core import files
from core.errors import UserError
from core.registry import lookup
from data.base import ENV_CACHE, Dataset, ImageSet, register_dataset, resolve_cache_dir

SIDE = 105
ENV_ROOT = "OMNIGLOT_ROOT"
DEFAULT_ROOT = Path("data/omniglot")
CACHE_FORMAT = 1


@dataclass(frozen=True)
class SetSpec:
    """What an official Omniglot set must contain, and where it can be downloaded."""

    name: str
    alphabets: int
    characters: int
    images: int
    official_md5: str

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{self.name}.zip"


SETS: dict[str, SetSpec] = {
    s.name: s
    for s in (
        SetSpec("images_evaluation", 20, 659, 13_180, "6b91aef0f799c5bb55b94e3f2daec811"),
        SetSpec("images_background", 30, 964, 19_280, "68d2efa1b9178cc56df9314c21c6e718"),
        SetSpec("images_background_small1", 5, 136, 2_720, "e704a628b5459e08445c13499850abc4"),
        SetSpec("images_background_small2", 5, 156, 3_120, "b75a71a51d3b13f821f212756fe481fd"),
    )
}
EVALUATION, SMALL1, SMALL2 = "images_evaluation", "images_background_small1", "images_background_small2"
BACKGROUND = "images_background"


def resolve_root(data_dir: str | os.PathLike | None) -> Path:
    """The data root: ``data_dir`` if given, else ``$OMNIGLOT_ROOT``, else ``./data/omniglot``."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).expanduser()
    return DEFAULT_ROOT


def load_set(
    name: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> ImageSet:
    """Load one Omniglot set by name (e.g. ``"images_evaluation"``), decoding it only on first use.

    Raises UserError (one line naming the file and where it belongs) when the data is missing or corrupt.
    """
    spec = lookup(SETS, name, "Omniglot set")
    root = resolve_root(data_dir)
    source = _find_source(spec, root, download)
    fingerprint = _fingerprint(source)
    cache = resolve_cache_dir(cache_dir)
    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:10]
    npy, meta_path = cache / f"{name}-{key}.npy", cache / f"{name}-{key}.json"
    meta = _read_meta(meta_path)
    if meta is None or meta.get("fingerprint") != fingerprint or not npy.exists():
        images, meta = _decode(spec, source)
        meta["fingerprint"] = fingerprint
        _write_cache(cache, npy, meta_path, images, meta)
    images = np.load(npy, mmap_mode="r")
    if images.shape != (spec.images, SIDE, SIDE):
        raise UserError(f"cache file {npy} is damaged (shape {images.shape}); delete it and run again")
    return ImageSet(
        name=name,
        images=images,
        alphabet=np.asarray(meta["alphabet"], dtype=np.int64),
        alphabet_names=tuple(meta["alphabet_names"]),
        character=np.asarray(meta["character"], dtype=np.int64),
        drawer=np.asarray(meta["drawer"], dtype=np.int64),
        files=tuple(meta["files"]),
        md5=tuple(meta["md5"]),
    )


# --- finding the source ---------------------------------------------------------------------------------


def _find_source(spec: SetSpec, root: Path, download: bool) -> Path:
    """The zip ``root/<set>.zip`` if present, else the folder ``root/<set>/``; download only if asked."""
    zip_path, folder = root / f"{spec.name}.zip", root / spec.name
    if zip_path.is_file():
        return zip_path
    if folder.is_dir():
        return folder
    if download:
        _download(spec, zip_path)
        return zip_path
    fix = f"point --data-dir or ${ENV_ROOT} at the folder holding the Omniglot zips, or pass --download"
    if not root.is_dir():
        raise UserError(f"Omniglot data root {root} does not exist: {fix}")
    raise UserError(
        f"{zip_path} not found (nor the folder {folder}/): put the official {spec.name}.zip there, or {fix}"
    )


def _download(spec: SetSpec, target: Path, timeout: float = 20.0) -> None:
    """Fetch the official zip into ``target`` with an md5 check; fails fast (one line) when offline."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"could not download {spec.url} ({reason}); offline? put {spec.name}.zip in {target.parent}"
        ) from None
    digest = hashlib.md5(payload).hexdigest()
    if digest != spec.official_md5:
        raise UserError(f"downloaded {spec.name}.zip has md5 {digest}, expected {spec.official_md5}; not saved")
    files.write_with(target, lambda fh: fh.write(payload))


def _fingerprint(source: Path) -> str:
    """Changes whenever the source's content can have changed."""
    if source.is_file():
        digest = hashlib.md5()
        with source.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return f"zip:{digest.hexdigest()}"
    listing = sorted(
        (str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns) for p in source.rglob("*.png")
    )
    return "dir:" + hashlib.md5(json.dumps(listing).encode()).hexdigest()


# --- decoding -------------------------------------------------------------------------------------------


def _entries(spec: SetSpec, source: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path inside the set, PNG bytes), sorted by path. Non-PNG entries are errors."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield path.relative_to(source).as_posix(), path.read_bytes()
        return
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(
            f"{source} is not a readable zip ({exc}); replace it with the official {spec.name}.zip"
        ) from None
    prefix = f"{spec.name}/"
    with archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/"))
        for name in names:
            if "__MACOSX" in name or Path(name).name.startswith("."):
                continue
            if not name.startswith(prefix):
                raise UserError(f"{source}: entry {name!r} is outside {prefix}; is this {spec.name}.zip?")
            try:
                payload = archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise UserError(f"{source}: cannot read {name} ({exc}); the zip is truncated or corrupt") from None
            yield name[len(prefix) :], payload


def _decode(spec: SetSpec, source: Path) -> tuple[np.ndarray, dict]:
    """Decode and validate every PNG of a set: (uint8 [N,105,105], metadata dict)."""
    images, files, md5s = [], [], []
    for rel, payload in _entries(spec, source):
        parts = rel.split("/")
        if len(parts) != 3 or not parts[2].endswith(".png"):
            raise UserError(f"{source}: unexpected entry {rel!r} (want <Alphabet>/characterNN/NNNN_MM.png)")
        try:
            with Image.open(io.BytesIO(payload)) as img:
                pixels = np.asarray(img.convert("L"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise UserError(f"{source}: {rel} is not a valid PNG ({exc})") from None
        if pixels.shape != (SIDE, SIDE):
            raise UserError(f"{source}: {rel} is {pixels.shape[1]}x{pixels.shape[0]}, expected 105x105")
        images.append(pixels)
        files.append(rel)
        md5s.append(hashlib.md5(payload).hexdigest())

    alphabets = sorted({f.split("/")[0] for f in files})
    characters = {tuple(f.split("/")[:2]) for f in files}
    found = (len(alphabets), len(characters), len(files))
    wanted = (spec.alphabets, spec.characters, spec.images)
    if found != wanted:
        raise UserError(
            f"{source}: found {found[0]} alphabets / {found[1]} characters / {found[2]} images, expected "
            f"{wanted[0]} / {wanted[1]} / {wanted[2]}; the file is incomplete or not the official {spec.name}"
        )
    stems = [Path(f).stem.split("_") for f in files]
    meta = {
        "format": CACHE_FORMAT,
        "set": spec.name,
        "source": str(source.resolve()),
        "alphabet_names": alphabets,
        "alphabet": [alphabets.index(f.split("/")[0]) for f in files],
        "character": [int(s[0]) for s in stems],
        "drawer": [int(s[1]) for s in stems],
        "files": files,
        "md5": md5s,
    }
    return np.stack(images), meta


# --- cache files ----------------------------------------------------------------------------------------


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


def _write_cache(cache: Path, npy: Path, meta_path: Path, images: np.ndarray, meta: dict) -> None:
    """Write array then metadata, each atomically; concurrent workers may race but never see half a file."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        files.write_with(npy, lambda fh: np.save(fh, images))
        files.write_text(meta_path, json.dumps(meta))
    except OSError as exc:
        raise UserError(f"cannot write the Omniglot cache in {cache} ({exc}); set ${ENV_CACHE}") from None


@register_dataset("omniglot")
class Omniglot(Dataset):
    """Omniglot (Lake et al.): clients hold ``images_evaluation`` (20 alphabets, the task's classes); the attacker
    trains on ``images_background_small1`` and is tested on ``images_background_small2`` (see docs/experiment.md
    for the files the two share); ``public`` is ``images_background`` minus small2's alphabets and files."""

    side = SIDE
    n_classes = SETS[EVALUATION].alphabets
    ROLE_SETS = {"private": EVALUATION, "surrogate": SMALL1, "unseen": SMALL2}

    def load(self, role: str, download: bool = False) -> ImageSet:
        if role == "public":
            return self._public()
        return load_set(self.ROLE_SETS[role], self.data_dir, download=download)

    def root(self) -> str:
        """The absolute data root (``resolve_root``)."""
        return str(resolve_root(self.data_dir).resolve())

    def describe(self, role: str) -> str:
        if role == "public":
            return f"{BACKGROUND} minus small2's alphabets and files"
        return {"surrogate": f"{SMALL1} (2020 experiment's surrogate)"}.get(role, self.ROLE_SETS[role])

    def _public(self) -> ImageSet:
        """images_background without small2's alphabets and byte-identical files; ValueError if an image of it is
        a client's private image (md5), which would make the surrogate see the clients' data."""
        background, small2 = load_set(BACKGROUND, self.data_dir), load_set(SMALL2, self.data_dir)
        banned_alphabets, banned_files = set(small2.alphabet_names), set(small2.md5)
        keep = np.flatnonzero(
            [
                background.alphabet_names[a] not in banned_alphabets and h not in banned_files
                for a, h in zip(background.alphabet, background.md5, strict=True)
            ]
        )
        private = set(load_set(EVALUATION, self.data_dir).md5)
        if any(background.md5[i] in private for i in keep):
            raise ValueError("a public surrogate image is byte-identical to a client's private image")
        return _subset(background, keep, "public")


def _subset(images: ImageSet, rows: np.ndarray, name: str) -> ImageSet:
    """The rows ``rows`` of ``images`` as a set of its own (the class ids and names kept)."""
    return ImageSet(
        name=name,
        images=images.images[rows],
        alphabet=images.alphabet[rows],
        alphabet_names=images.alphabet_names,
        character=images.character[rows],
        drawer=images.drawer[rows],
        files=tuple(images.files[i] for i in rows),
        md5=tuple(images.md5[i] for i in rows),
    )
