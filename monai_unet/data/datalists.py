"""Datalists (lists of ``{"image": path, "label": path}``) for the folder layouts the bundles accept.

- :func:`membrane_datalist`: 2D images, the ISBI 2012 layout (``images/`` + ``labels/`` with matching names, PNG or
  TIFF) or multi-page TIFF stacks (``train-volume.tif`` + ``train-labels.tif``), whose pages are split into single
  2D TIFF files in a cache folder so that every page is an ordinary item for ``LoadImaged``.
- :func:`volume_datalist`: 3D volumes: an MSD ``dataset.json`` (through ``monai.data.load_decathlon_datalist``),
  the TCIA Brain-Tumor-Progression layout (DICOM series folders), or ``imagesTr``/``labelsTr`` (or
  ``images``/``labels``) folders of NIfTI/NRRD/MHA files or DICOM series folders paired by name.
- :func:`split_datalist`: a deterministic train/validation split.

Paths in the returned items are absolute strings.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from monai.data import partition_dataset

from monai_unet.data.channels import ChannelPatterns, match_study_channels, nnunet_case_channels
from monai_unet.io.formats import IMAGE_SUFFIXES_2D, TIFF_SUFFIXES, VOLUME_SUFFIXES, strip_suffix, suffix_of
from monai_unet.io.writers import write_json, write_tiff

__all__ = [
    "IMAGE_SUFFIXES_2D",
    "VOLUME_SUFFIXES",
    "membrane_datalist",
    "split_datalist",
    "split_tiff_stack",
    "tiff_stack_datalist",
    "volume_datalist",
]

_STACK_IMAGE_WORDS = ("volume", "images", "image")
_STACK_LABEL_WORDS = ("labels", "label", "masks", "mask")
Item = dict[str, "str | list[str]"]


def _visible(folder: Path) -> list[Path]:
    """Entries of ``folder`` sorted by name, without hidden entries (temporary and cache files start with a dot)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist (resolved: {folder.resolve()}).")
    return folder.resolve()


def _pair_by_name(
    image_files: dict[str, Path], label_files: dict[str, Path], image_dir: Path, label_dir: Path
) -> list[tuple[Path, Path]]:
    """Pair images and labels with the same key; every image needs a label (extra labels are an error too)."""
    missing = sorted(set(image_files) - set(label_files))
    extra = sorted(set(label_files) - set(image_files))
    if missing or extra:
        raise ValueError(
            f"Images in {image_dir} and labels in {label_dir} do not match by name: "
            f"{len(missing)} image(s) without a label {missing[:5]}, {len(extra)} label(s) without an image "
            f"{extra[:5]}. Give each image a label file with the same name (the extension may differ)."
        )
    return [(image_files[k], label_files[k]) for k in sorted(image_files)]


# ----------------------------------------------------------------------------------------------------------- 2D data


def _pair_keys(
    cases: dict[str, list[Path]], labels: dict[str, Path], image_dir: Path, label_dir: Path
) -> list[tuple[str, Path]]:
    """Pair cases (nnU-Net channel files grouped) with the labels of the same name."""
    firsts = {key: files[0] for key, files in cases.items()}
    by_path = {files[0]: key for key, files in cases.items()}
    return [(by_path[i], lb) for i, lb in _pair_by_name(firsts, labels, image_dir, label_dir)]


def _tiff_pages(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return len(tif.pages)


def _page_cache_dir(stack: Path, cache_dir: str | os.PathLike | None) -> Path:
    """Cache folder for the pages of ``stack``, keyed by its absolute path, size and modification time."""
    stat = stack.stat()
    key = hashlib.sha1(f"{stack.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "monai_unet" / "tiff_pages"
    return root / f"{strip_suffix(stack.name, TIFF_SUFFIXES)}_{key}"


def split_tiff_stack(stack: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Write every page of a multi-page TIFF as a single-page TIFF (same dtype) and return their paths.

    Idempotent: pages already split for this file (same path, size and modification time) are reused. Each page is
    written atomically; a ``pages.json`` written last marks the folder complete.

    Args:
        stack: the multi-page TIFF, pages ``(N, H, W)``.
        cache_dir: where to write ``<stem>_<key>/page_NNNN.tif``; default ``~/.cache/monai_unet/tiff_pages``.

    Returns:
        The page files, in page order.
    """
    import tifffile

    stack = Path(stack)
    out = _page_cache_dir(stack, cache_dir)
    done = out / "pages.json"
    with tifffile.TiffFile(stack) as tif:
        n = len(tif.pages)
        pages = [out / f"page_{i:04d}.tif" for i in range(n)]
        if not (done.is_file() and all(p.is_file() for p in pages)):
            for i, page in enumerate(tif.pages):
                if not pages[i].is_file():
                    write_tiff(page.asarray(), pages[i], compression=None)
            write_json(done, {"source": str(stack.resolve()), "pages": n})
    return [str(p) for p in pages]


def tiff_stack_datalist(
    image_stack: str | os.PathLike, label_stack: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> list[Item]:
    """Datalist from a multi-page TIFF image stack and its label stack, one item per page.

    The pages are split to single-page TIFF files (see :func:`split_tiff_stack`), so every transform downstream
    sees ordinary 2D files.

    Args:
        image_stack: multi-page TIFF of images, e.g. ISBI 2012 ``train-volume.tif``.
        label_stack: multi-page TIFF of labels with as many pages, e.g. ``train-labels.tif``.
        cache_dir: where the pages are written (see :func:`split_tiff_stack`).

    Returns:
        ``[{"image": page_path, "label": page_path}, ...]`` in page order.

    Raises:
        FileNotFoundError: a stack does not exist.
        ValueError: the stacks have different page counts or page shapes.
    """
    import tifffile

    for p in (image_stack, label_stack):
        if not Path(p).is_file():
            raise FileNotFoundError(f"TIFF stack {p} does not exist.")
    with tifffile.TiffFile(image_stack) as ti, tifffile.TiffFile(label_stack) as tl:
        ni, nl = len(ti.pages), len(tl.pages)
        si, sl = ti.pages[0].shape, tl.pages[0].shape
    if ni != nl or si[:2] != sl[:2]:
        raise ValueError(
            f"Image stack {image_stack} ({ni} pages of {si}) and label stack {label_stack} ({nl} pages of {sl}) "
            "do not match: they need the same number of pages of the same size."
        )
    images, labels = split_tiff_stack(image_stack, cache_dir), split_tiff_stack(label_stack, cache_dir)
    return [{"image": i, "label": lb} for i, lb in zip(images, labels)]


def _find_stack_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Top-level TIFF pairs whose names differ only in an image word and a label word (train-volume/train-labels)."""
    tiffs = {p.name.lower(): p for p in _visible(folder) if p.is_file() and suffix_of(p.name, TIFF_SUFFIXES)}
    pairs = []
    for name, path in tiffs.items():
        for iw in _STACK_IMAGE_WORDS:
            if iw not in name:
                continue
            match = next((tiffs[c] for lw in _STACK_LABEL_WORDS if (c := name.replace(iw, lw)) in tiffs), None)
            if match is not None:
                pairs.append((path, match))
                break
    return pairs


def membrane_datalist(
    dataset_dir: str | os.PathLike,
    image_dir: str = "images",
    label_dir: str = "labels",
    cache_dir: str | os.PathLike | None = None,
    check_sizes: bool = True,
) -> list[Item]:
    """Datalist of 2D image/label pairs in the ISBI 2012 layout or as multi-page TIFF stacks.

    Layouts, tried in this order:

    1. ``dataset_dir/images/*`` and ``dataset_dir/labels/*`` (PNG or TIFF) paired by file name without extension.
       A multi-page TIFF among them is a stack: it is paired with the label stack of the same name and each page
       becomes an item.
    2. Multi-page TIFF stacks at the top of ``dataset_dir`` named like ``train-volume.tif`` + ``train-labels.tif``
       (an image word ``volume``/``image(s)`` and a label word ``label(s)``/``mask(s)``, the rest equal).

    Labels are as in ISBI 2012 (0 = membrane, 255 = interior); this function does not read pixel values.

    Args:
        dataset_dir: the dataset folder.
        image_dir: name of the image subfolder.
        label_dir: name of the label subfolder.
        cache_dir: where pages of TIFF stacks are written (see :func:`split_tiff_stack`).
        check_sizes: check from the file headers that each image and its label have the same size.

    Returns:
        ``[{"image": path, "label": path}, ...]`` sorted by name (then page).

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing or holds neither layout.
        ValueError: images and labels do not pair up, or their sizes differ.
    """
    root = _require_dir(dataset_dir, "Membrane dataset")
    images_path, labels_path = root / image_dir, root / label_dir
    if images_path.is_dir() and labels_path.is_dir():
        files = {}
        for folder in (images_path, labels_path):
            entries = [p for p in _visible(folder) if p.is_file() and suffix_of(p.name, IMAGE_SUFFIXES_2D)]
            keyed = {strip_suffix(p.name, IMAGE_SUFFIXES_2D): p for p in entries}
            if len(keyed) < len(entries):
                raise ValueError(f"{folder} holds files with the same name and different extensions.")
            files[folder] = keyed
        if not files[images_path]:
            raise FileNotFoundError(
                f"No PNG/TIFF images in {images_path}: expected files like {image_dir}/train_00.png with labels "
                f"{label_dir}/train_00.png."
            )
        pairs = _pair_by_name(files[images_path], files[labels_path], images_path, labels_path)
        items: list[Item] = []
        for image, label in pairs:
            if suffix_of(image.name, TIFF_SUFFIXES) and _tiff_pages(image) > 1:
                items.extend(tiff_stack_datalist(image, label, cache_dir))
            else:
                items.append({"image": str(image), "label": str(label)})
        if check_sizes:
            _check_2d_sizes(items)
        return items
    stacks = _find_stack_pairs(root)
    if stacks:
        return [item for image, label in stacks for item in tiff_stack_datalist(image, label, cache_dir)]
    raise FileNotFoundError(
        f"{root} is not a membrane dataset: expected folders {image_dir}/ and {label_dir}/ with PNG/TIFF files of "
        "the same names (the ISBI 2012 layout), or multi-page TIFF stacks such as train-volume.tif + "
        f"train-labels.tif. Found: {[p.name for p in _visible(root)][:10]}."
    )


def _check_2d_sizes(items: list[Item]) -> None:
    from PIL import Image

    for item in items:
        with Image.open(item["image"]) as im, Image.open(item["label"]) as lb:
            if im.size != lb.size:
                raise ValueError(
                    f"Image {item['image']} is {im.size[1]}x{im.size[0]} but its label {item['label']} is "
                    f"{lb.size[1]}x{lb.size[0]} (HxW); they must be the same size."
                )


# ----------------------------------------------------------------------------------------------------------- 3D data


def _find_series_studies(
    root: Path, image_series: str, label_series: str, max_depth: int = 3, channels: ChannelPatterns | None = None
) -> list[Item]:
    """Study folders (up to ``max_depth`` below ``root``) holding one image and one label series folder; with
    ``channels``, one series folder per named channel (see :func:`~monai_unet.data.channels.match_study_channels`)."""
    items = []
    for current, dirs, _ in os.walk(root):
        depth = len(Path(current).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        labels = [d for d in dirs if fnmatch.fnmatch(d, label_series)]
        if channels:
            if not labels:
                continue
            images, label = match_study_channels(current, channels, label_series)
            items.append({"image": images if len(images) > 1 else images[0], "label": label})
            dirs[:] = []
            continue
        images = [d for d in dirs if fnmatch.fnmatch(d, image_series)]
        if not images and not labels:
            continue
        if len(images) != 1 or len(labels) != 1:
            raise ValueError(
                f"Study folder {current} should hold exactly one image series folder matching {image_series!r} "
                f"and one label series folder matching {label_series!r}; found {images} and {labels}."
            )
        items.append({"image": str(Path(current) / images[0]), "label": str(Path(current) / labels[0])})
        dirs[:] = []
    return items


def _volume_entries(folder: Path) -> dict[str, Path]:
    """Volume files (NIfTI/NRRD/MHA) and series folders (DICOM) of ``folder`` by name without extension."""
    entries = {}
    for p in _visible(folder):
        if p.is_file() and suffix_of(p.name, VOLUME_SUFFIXES):
            entries[strip_suffix(p.name, VOLUME_SUFFIXES)] = p
        elif p.is_dir():
            entries[p.name] = p
    return entries


def volume_datalist(
    dataset_dir: str | os.PathLike,
    section: str = "training",
    image_series: str = "*T1post*",
    label_series: str = "*MaskTumor*",
    channels: ChannelPatterns | None = None,
) -> list[Item]:
    """Datalist of 3D image/label pairs.

    Layouts, tried in this order:

    1. ``dataset_dir/dataset.json`` (Medical Segmentation Decathlon): the ``section`` list, read with
       ``monai.data.load_decathlon_datalist`` (paths relative to ``dataset_dir``).
    2. DICOM studies (the TCIA Brain-Tumor-Progression layout): folders up to three levels down that hold an image
       series folder matching ``image_series`` and a label series folder matching ``label_series``; each study
       gives ``{"image": <image series folder>, "label": <label series folder>}``.
    3. ``imagesTr``/``labelsTr`` or ``images``/``labels``: NIfTI/NRRD/MHA files or DICOM series folders paired by
       name (nnU-Net's ``_0000`` channel suffix on images is allowed).
    4. Flat: ``<case>_image.<ext>`` beside ``<case>_label.<ext>`` (NIfTI/NRRD/MHA).

    Args:
        dataset_dir: the dataset folder.
        section: the ``dataset.json`` list to read (``"training"`` or ``"validation"``); other layouts have no
            sections and ignore it.
        image_series: glob for the image series folder of a DICOM study (one channel).
        label_series: glob for the label series folder of a DICOM study.
        channels: named input channels, ``{name: pattern(s)}`` (the bundle's ``channel_def`` patterns): a DICOM
            study gives one series folder per channel (by folder name or SeriesDescription), nnU-Net's
            ``CASE_0000``, ``CASE_0001``, ... files must number as many. ``None``: one channel, ``image_series``.

    Returns:
        ``[{"image": path, "label": path}, ...]`` (files or DICOM series folders), sorted by name; with more than
        one channel ``"image"`` is the list of the channels' paths (``LoadImaged`` stacks them as channels).

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing or matches no layout.
        ValueError: images and labels do not pair up, or a ``dataset.json`` lacks ``section``.
    """
    root = _require_dir(dataset_dir, "Volume dataset")
    dataset_json = root / "dataset.json"
    nnunet_v2 = (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir()
    if dataset_json.is_file() and nnunet_v2 and "training" not in json.loads(dataset_json.read_text()):
        dataset_json = root / ".no-list"  # nnU-Net v2's dataset.json lists no cases: the folders do
    if dataset_json.is_file():
        from monai.data import load_decathlon_datalist

        sections = json.loads(dataset_json.read_text())
        if not sections.get(section):
            raise ValueError(f"{dataset_json} has no (or an empty) {section!r} list; it has {sorted(sections)}.")
        items = load_decathlon_datalist(dataset_json, is_segmentation=True, data_list_key=section, base_dir=root)
        for item in items:
            for key in ("image", "label"):
                if not Path(item[key]).exists():
                    raise FileNotFoundError(f"{dataset_json} lists {item[key]}, which does not exist.")
        return items
    studies = _find_series_studies(root, image_series, label_series, channels=channels)
    if studies:
        return studies
    for image_dir, label_dir in (("imagesTr", "labelsTr"), ("images", "labels")):
        images_path, labels_path = root / image_dir, root / label_dir
        if not (images_path.is_dir() and labels_path.is_dir()):
            continue
        images, labels = _volume_entries(images_path), _volume_entries(labels_path)
        if not images:
            raise FileNotFoundError(
                f"No volumes in {images_path}: expected NIfTI/NRRD/MHA files ({', '.join(VOLUME_SUFFIXES)}) or DICOM "
                f"series folders, each with a label of the same name in {labels_path}."
            )
        cases = nnunet_case_channels(images, len(channels) if channels else None, cases=list(labels))
        return [
            {"image": [str(p) for p in cases[key]] if len(cases[key]) > 1 else str(cases[key][0]), "label": str(lb)}
            for key, lb in _pair_keys(cases, labels, images_path, labels_path)
        ]
    flat = _volume_entries(root)
    images = {k[: -len("_image")]: v for k, v in flat.items() if k.endswith("_image") and v.is_file()}
    labels = {k[: -len("_label")]: v for k, v in flat.items() if k.endswith("_label") and v.is_file()}
    if images:
        return [{"image": str(i), "label": str(lb)} for i, lb in _pair_by_name(images, labels, root, root)]
    raise FileNotFoundError(
        f"{root} is not a volume dataset: expected a dataset.json (MSD), DICOM study folders each holding a "
        f"{image_series!r} and a {label_series!r} series folder, imagesTr/ + labelsTr/ (or images/ + labels/) with "
        f"NIfTI/NRRD/MHA files of the same names, or <case>_image.nrrd + <case>_label.nrrd files. "
        f"Found: {[p.name for p in _visible(root)][:10]}."
    )


# ------------------------------------------------------------------------------------------------------------ splits


def split_datalist(
    items: Sequence[Item],
    val_fraction: float = 0.2,
    val_indices: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[list[Item], list[Item]]:
    """Split a datalist into training and validation lists, deterministically.

    Args:
        items: the datalist.
        val_fraction: fraction of items for validation, drawn by ``monai.data.partition_dataset`` with ``seed``;
            at least one item goes to each side when there are two or more items. Ignored when ``val_indices`` is
            given.
        val_indices: explicit indices of the validation items (in ``items``).
        seed: seed of the permutation.

    Returns:
        ``(train, val)``, each in the original order of ``items``.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1), an index out of range, or fewer than two items for a split.
    """
    n = len(items)
    if val_indices is not None:
        bad = [i for i in val_indices if not -n <= int(i) < n]
        if bad:
            raise ValueError(f"Validation indices {bad} are out of range for a datalist of {n} items.")
        val = sorted({int(i) % n for i in val_indices})
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        if val_fraction == 0.0:
            return list(items), []
        if n < 2:
            raise ValueError(f"Cannot split {n} item(s) into training and validation; give at least 2.")
        n_val = min(n - 1, max(1, round(n * val_fraction)))
        _, val = partition_dataset(list(range(n)), ratios=[n - n_val, n_val], shuffle=True, seed=seed)
        val = sorted(val)
    val_set = set(val)
    return [it for i, it in enumerate(items) if i not in val_set], [items[i] for i in val]
