"""data/omniglot.py on the real Omniglot zips: counts, pixel convention, order, cache, and every user error."""

from __future__ import annotations

import io
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data.omniglot as data
from core.errors import UserError
from data.base import ImageSet, shared_files
from data.omniglot import SMALL1, SMALL2, SetSpec, load_set

# From the data README: characters per alphabet of the evaluation set.
EVALUATION_CHARACTERS = {
    "Angelic": 20,
    "Atemayar_Qelisayer": 26,
    "Atlantean": 26,
    "Aurek-Besh": 26,
    "Avesta": 26,
    "Ge_ez": 26,
    "Glagolitic": 45,
    "Gurmukhi": 45,
    "Kannada": 41,
    "Keble": 26,
    "Malayalam": 47,
    "Manipuri": 40,
    "Mongolian": 30,
    "Old_Church_Slavonic_(Cyrillic)": 45,
    "Oriya": 46,
    "Sylheti": 28,
    "Syriac_(Serto)": 23,
    "Tengwar": 25,
    "Tibetan": 42,
    "ULOG": 26,
}


def rewrite_zip(
    source: Path,
    target: Path,
    change: Callable[[str, bytes], bytes | None] = lambda name, payload: payload,
    extra: Iterable[tuple[str, bytes]] = (),
) -> None:
    """Copy zip ``source`` to ``target`` entry by entry. ``change(name, payload)`` gives the new payload, or None
    to drop the entry; directory entries are copied as they are; ``extra`` (name, payload) entries are appended."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.is_dir():
                dst.writestr(info, b"")
                continue
            payload = change(info.filename, src.read(info))
            if payload is not None:
                dst.writestr(info.filename, payload)
        for name, payload in extra:
            dst.writestr(name, payload)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def load_error(tmp_path: Path, zip_path: Path | None = None) -> str:
    """Load small1 from ``zip_path``'s folder (tmp cache) and return the UserError's message."""
    root = zip_path.parent if zip_path else tmp_path / "data"
    with pytest.raises(UserError) as info:
        load_set(SMALL1, data_dir=root, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    return message


# --- counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "alphabets", "characters", "images"),
    [("evaluation", 20, 659, 13_180), ("small1", 5, 136, 2_720), ("small2", 5, 156, 3_120)],
)
def test_counts(omniglot, attr: str, alphabets: int, characters: int, images: int) -> None:
    ds: ImageSet = getattr(omniglot, attr)
    assert len(ds) == images
    assert ds.images.shape == (images, 105, 105)
    assert ds.images.dtype == np.uint8
    assert len(ds.alphabet_names) == alphabets
    assert sorted(np.unique(ds.alphabet).tolist()) == list(range(alphabets))
    pairs = {(a, c) for a, c in zip(ds.alphabet.tolist(), ds.character.tolist(), strict=True)}
    assert len(pairs) == characters
    folders = {tuple(f.split("/")[:2]) for f in ds.files}
    assert len(folders) == characters
    # Every character is drawn once by each of the 20 drawers.
    assert np.array_equal(np.bincount(ds.character)[np.unique(ds.character)], np.full(characters, 20))
    assert sorted(np.unique(ds.drawer).tolist()) == list(range(1, 21))
    assert len(ds.md5) == images


def test_evaluation_alphabets(evaluation: ImageSet) -> None:
    assert evaluation.alphabet_names == tuple(sorted(EVALUATION_CHARACTERS))
    per_alphabet = {
        name: len(np.unique(evaluation.character[evaluation.alphabet == i]))
        for i, name in enumerate(evaluation.alphabet_names)
    }
    assert per_alphabet == EVALUATION_CHARACTERS
    # Image counts per alphabet are 20 drawings x characters.
    assert np.bincount(evaluation.alphabet).tolist() == [20 * EVALUATION_CHARACTERS[n] for n in sorted(per_alphabet)]


def test_metadata_matches_paths(evaluation: ImageSet) -> None:
    for i in range(0, len(evaluation), 97):
        alphabet, folder, filename = evaluation.files[i].split("/")
        assert evaluation.alphabet_names[evaluation.alphabet[i]] == alphabet
        assert folder.startswith("character")
        stem = filename.removesuffix(".png")
        assert stem == f"{evaluation.character[i]:04d}_{evaluation.drawer[i]:02d}"


# --- pixels ---------------------------------------------------------------------------------------------


def test_pixel_convention(evaluation: ImageSet) -> None:
    sample = np.arange(0, len(evaluation), 13)  # ~1,000 images spread over all alphabets
    x = evaluation.as_float(sample)
    assert x.dtype == np.float32
    assert x.shape == (len(sample), 1, 105, 105)
    assert np.all((x >= 0.0) & (x <= 1.0))
    # 1-bit images: only background 1.0 and strokes 0.0.
    assert set(np.unique(x).tolist()) == {0.0, 1.0}
    white = float(x.mean())
    assert 0.90 < white < 0.94, white  # ~92% background
    # Every image has strokes and is mostly background.
    per_image = x.reshape(len(sample), -1)
    assert np.all(per_image.min(axis=1) == 0.0)
    assert np.all(per_image.mean(axis=1) > 0.6)
    # Corners are background in nearly every drawing.
    corners = x[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.mean() > 0.99
    # as_float agrees with the raw uint8 (255 = white) and accepts a slice.
    assert np.array_equal(evaluation.as_float(slice(0, 3))[:, 0], evaluation.images[:3] / np.float32(255))


def test_white_fraction_all_sets(omniglot) -> None:
    for ds in (omniglot.evaluation, omniglot.small1, omniglot.small2):
        assert set(np.unique(ds.images[::50]).tolist()) == {0, 255}
        assert 0.90 < float((ds.images[::10] == 255).mean()) < 0.94


# --- order ----------------------------------------------------------------------------------------------


def test_sorted_deterministic_order(omniglot, omniglot_root: Path, tmp_path: Path) -> None:
    for ds in (omniglot.evaluation, omniglot.small1, omniglot.small2):
        assert list(ds.files) == sorted(ds.files)
        assert len(set(ds.files)) == len(ds.files)
        assert list(ds.alphabet_names) == sorted(ds.alphabet_names)
        assert np.all(np.diff(ds.alphabet) >= 0)  # alphabet ids follow the sorted paths
    # A fresh decode (new cache) gives the very same order and pixels.
    again = load_set(SMALL1, omniglot_root, cache_dir=tmp_path / "cache")
    assert again.files == omniglot.small1.files
    assert np.array_equal(again.images, omniglot.small1.images)
    assert np.array_equal(again.character, omniglot.small1.character)


def test_shared_files_small1_small2(small1: ImageSet, small2: ImageSet) -> None:
    shared = shared_files(small1, small2)
    assert shared.dtype == bool
    assert shared.shape == (len(small2),)
    assert int(shared.sum()) == 1_000
    assert {small2.alphabet_names[a] for a in np.unique(small2.alphabet[shared])} == {"Greek", "Latin"}
    # The shared files are the same paths with the same pixels in both sets.
    index1 = {f: i for i, f in enumerate(small1.files)}
    for j in np.flatnonzero(shared)[::50]:
        i = index1[small2.files[j]]
        assert np.array_equal(small1.images[i], small2.images[j])
    # The same 1,000 seen from small1's side, also only Greek and Latin.
    back = shared_files(small2, small1)
    assert int(back.sum()) == 1_000
    assert {small1.alphabet_names[a] for a in np.unique(small1.alphabet[back])} == {"Greek", "Latin"}
    # Every small1 Greek/Latin image is shared: the two alphabets are identical in both subsets.
    greek_latin = np.isin(small1.alphabet, [small1.alphabet_names.index(n) for n in ("Greek", "Latin")])
    assert np.array_equal(back, greek_latin)


# --- cache ----------------------------------------------------------------------------------------------


def test_cache_reused_memory_mapped(small1_zip: Path, small1: ImageSet, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = load_set(SMALL1, small1_zip.parent, cache_dir=cache)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]

    def no_decode(*args, **kwargs):
        raise AssertionError("_decode called although the cache is valid")

    monkeypatch.setattr(data, "_decode", no_decode)
    second = load_set(SMALL1, small1_zip.parent, cache_dir=cache)
    assert isinstance(second.images, np.memmap)
    assert second.images.shape == (2_720, 105, 105)
    assert np.array_equal(second.images, first.images)
    assert np.array_equal(second.images, small1.images)
    assert second.files == small1.files and second.md5 == small1.md5


def test_cache_env_var(small1_zip: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMNIGLOT_CACHE", str(tmp_path / "envcache"))
    load_set(SMALL1, small1_zip.parent)
    assert len(list((tmp_path / "envcache").glob(f"{SMALL1}-*.npy"))) == 1


def test_cache_invalidated_when_zip_changes(small1_zip: Path, tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    zip_path = root / small1_zip.name
    shutil.copyfile(small1_zip, zip_path)

    calls = []
    real_decode = data._decode

    def counting_decode(*args, **kwargs):
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(data, "_decode", counting_decode)
    before = load_set(SMALL1, root, cache_dir=cache)
    load_set(SMALL1, root, cache_dir=cache)
    assert len(calls) == 1

    victim = 1234
    original = np.array(before.images[victim])
    inverted = 255 - original
    target = f"{SMALL1}/{before.files[victim]}"
    rewrite_zip(small1_zip, tmp_path / "new.zip", lambda name, p: png_bytes(inverted) if name == target else p)
    os.replace(tmp_path / "new.zip", zip_path)

    after = load_set(SMALL1, root, cache_dir=cache)
    assert len(calls) == 2
    assert after.files == before.files
    assert np.array_equal(after.images[victim], inverted)
    assert not np.array_equal(after.images[victim], original)
    assert after.md5[victim] != before.md5[victim]
    others = np.arange(len(after)) != victim
    assert np.array_equal(after.images[others], before.images[others])
    assert [h for i, h in enumerate(after.md5) if i != victim] == [h for i, h in enumerate(before.md5) if i != victim]
    assert len(list(cache.glob("*.npy"))) == 1  # rebuilt in place, not a second copy


def test_extracted_folder_equals_zip(small1_zip: Path, small1: ImageSet, tmp_path: Path) -> None:
    with zipfile.ZipFile(small1_zip) as archive:
        archive.extractall(tmp_path / "extracted")
    assert (tmp_path / "extracted" / SMALL1).is_dir()
    folder = load_set(SMALL1, tmp_path / "extracted", cache_dir=tmp_path / "cache")
    assert folder.files == small1.files
    assert folder.md5 == small1.md5
    assert folder.alphabet_names == small1.alphabet_names
    assert np.array_equal(folder.images, small1.images)
    assert np.array_equal(folder.alphabet, small1.alphabet)
    assert np.array_equal(folder.character, small1.character)
    assert np.array_equal(folder.drawer, small1.drawer)


# --- user errors ----------------------------------------------------------------------------------------


def test_missing_zip(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    message = load_error(tmp_path)
    assert str(tmp_path / "data" / f"{SMALL1}.zip") in message
    assert "--data-dir" in message


def test_missing_root(tmp_path: Path) -> None:
    message = load_error(tmp_path)  # tmp_path/data does not exist
    assert str(tmp_path / "data") in message
    assert "does not exist" in message and "--data-dir" in message


def test_unknown_set() -> None:
    with pytest.raises(UserError, match="^Omniglot set must be one of images_evaluation, .*, got 'bogus'$"):
        load_set("bogus")


def test_truncated_zip(small1_zip: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    zip_path = tmp_path / "data" / small1_zip.name
    payload = small1_zip.read_bytes()
    zip_path.write_bytes(payload[: len(payload) // 2])
    message = load_error(tmp_path, zip_path)
    assert str(zip_path) in message
    assert "zip" in message


def test_garbage_png_entry(small1_zip: Path, small1: ImageSet, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    zip_path = tmp_path / "data" / small1_zip.name
    victim = small1.files[500]
    rewrite_zip(small1_zip, zip_path, lambda name, p: b"not a png at all" if name == f"{SMALL1}/{victim}" else p)
    message = load_error(tmp_path, zip_path)
    assert victim in message
    assert "not a valid PNG" in message


def test_non_png_entry(small1_zip: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    zip_path = tmp_path / "data" / small1_zip.name
    rewrite_zip(small1_zip, zip_path, extra=[(f"{SMALL1}/Greek/character01/notes.txt", b"hello")])
    message = load_error(tmp_path, zip_path)
    assert "Greek/character01/notes.txt" in message


def test_wrong_size_png(small1_zip: Path, small1: ImageSet, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    zip_path = tmp_path / "data" / small1_zip.name
    victim = small1.files[7]
    small = png_bytes(np.full((50, 60), 255))
    rewrite_zip(small1_zip, zip_path, lambda name, p: small if name == f"{SMALL1}/{victim}" else p)
    message = load_error(tmp_path, zip_path)
    assert victim in message and "60x50" in message and "105x105" in message


def test_zip_missing_an_alphabet(small1_zip: Path, small1: ImageSet, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    zip_path = tmp_path / "data" / small1_zip.name
    dropped = "Korean"
    kept = small1.alphabet != small1.alphabet_names.index(dropped)
    rewrite_zip(small1_zip, zip_path, lambda name, p: None if name.startswith(f"{SMALL1}/{dropped}/") else p)
    message = load_error(tmp_path, zip_path)
    n_chars = len(np.unique(small1.character[kept]))
    assert f"found 4 alphabets / {n_chars} characters / {int(kept.sum())} images" in message
    assert "expected 5 / 136 / 2720" in message
    assert str(zip_path) in message


def test_download_unreachable_fails_fast(tmp_path: Path, monkeypatch) -> None:
    url = "http://127.0.0.1:9/x.zip"
    monkeypatch.setattr(SetSpec, "url", property(lambda self: url))
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        load_set(SMALL1, tmp_path / "data", cache_dir=tmp_path / "cache", download=True)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and "offline?" in message and f"{SMALL1}.zip" in message
    assert not (tmp_path / "data" / f"{SMALL1}.zip").exists()


def test_download_checks_md5(omniglot_root: Path, small1: ImageSet, tmp_path: Path, monkeypatch) -> None:
    # The small zips are the official files byte for byte, so a file:// "download" of them passes the md5 check...
    monkeypatch.setattr(SetSpec, "url", property(lambda self: (omniglot_root / f"{self.name}.zip").as_uri()))
    got = load_set(SMALL1, tmp_path / "data", cache_dir=tmp_path / "cache", download=True)
    assert (tmp_path / "data" / f"{SMALL1}.zip").read_bytes() == (omniglot_root / f"{SMALL1}.zip").read_bytes()
    assert got.files == small1.files
    # ...while the wrong file is refused and not saved.
    monkeypatch.setattr(SetSpec, "url", property(lambda self: (omniglot_root / f"{SMALL1}.zip").as_uri()))
    with pytest.raises(UserError, match="md5 .* expected b75a71a51d3b13f821f212756fe481fd; not saved"):
        load_set(SMALL2, tmp_path / "data", cache_dir=tmp_path / "cache", download=True)
    assert not (tmp_path / "data" / f"{SMALL2}.zip").exists()
