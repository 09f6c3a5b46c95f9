"""Where a run's images come from: a class folder, a manifest, or a Hugging Face dataset.

:func:`read_source` reads any of them into the one
:class:`~zoo.adaptation.data.ImageFolder` (class names, ``(image, class index)`` samples, the
files left out), so everything after it — the stratified ``val_split``, the loaders, the
feature cache, ``compare``, ``evaluate`` — is the same for every source:

* a **class folder** (``data/cat/1.jpg``): :func:`~zoo.adaptation.data.scan_image_folder`;
* a **manifest**: a ``.csv`` file whose header row names the columns ``path`` and ``label``
  (other columns are ignored), or a ``.jsonl`` file of one ``{"path": ..., "label": ...}``
  object a line. It is untrusted input: read through :mod:`zoo.io.trust` (a regular file, not
  a link, at most :data:`MAX_MANIFEST_BYTES`), each path relative to the manifest's folder and
  inside it, through no link (:func:`~zoo.io.trust.path_in`), each image opened and checked as
  a class folder's is, each file once (across training and validation too). A bad row is a
  :class:`~zoo.DataError` naming the file and the line. One label a row: several (``a|b``, a
  list) say that multi-label data is out of scope;
* a Hugging Face ``datasets.Dataset`` with one ``Image`` column and one ``ClassLabel`` column
  (the class names are the feature's), or a ``DatasetDict`` whose ``train`` split trains and
  whose ``validation`` split (or ``valid``, ``val``) validates. Encoded images held in the
  dataset are read from its rows (:class:`DatasetImage`) and checked like files; a row that
  only names a file (``load_dataset("imagefolder", data_dir=...)``) is that file. Needs the
  optional ``datasets`` package (``pip install 'zoo-transfer[datasets]'``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from zoo.adaptation.data import (
    ImageFolder,
    OnCorrupt,
    Sample,
    Seen,
    SkippedFile,
    collect,
    file_key,
    first_time,
    scan_image_folder,
)
from zoo.core import checks
from zoo.errors import DataError, ModelNotFoundError, ZooError, short_repr
from zoo.io.trust import MAX_NAME_LENGTH, path_in, read_bytes_in

#: The file name endings of manifests (any other path is an image folder).
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl")
#: The largest manifest read (256 MiB, millions of rows), checked before it is read.
MAX_MANIFEST_BYTES = 256 * 2**20
#: The names of a ``DatasetDict``'s validation split, in the order they are looked for.
VALIDATION_SPLITS: tuple[str, ...] = ("validation", "valid", "val")
#: The pip extra that installs ``datasets``.
DATASETS_EXTRA = "pip install 'zoo-transfer[datasets]'"
_DATASET_TYPES = frozenset({"Dataset", "DatasetDict", "IterableDataset", "IterableDatasetDict"})
_ROWS_AT_ONCE = 512  # dataset rows read per step of the scan (their encoded images in memory)


def is_dataset(value: Any, kinds: frozenset[str] = _DATASET_TYPES) -> bool:
    """Whether ``value`` is a Hugging Face dataset (of one of ``kinds``), told without
    importing ``datasets``."""
    return any(
        c.__module__.split(".")[0] == "datasets" and c.__name__ in kinds
        for c in type(value).__mro__
    )


def is_source(value: Any) -> bool:
    """Whether ``value`` is an image source :func:`read_source` reads: a path (a folder or a
    manifest) or a Hugging Face dataset."""
    return isinstance(value, (str, os.PathLike)) or is_dataset(value)


def kind_of(value: Any) -> str:
    """``"folder"``, ``"manifest"`` or ``"dataset"``: what a source is, for messages."""
    if is_dataset(value):
        return "dataset"
    return "manifest" if is_manifest(value) else "folder"


def is_manifest(value: Any) -> bool:
    """Whether ``value`` is a path that names a manifest (``.csv``, ``.jsonl``)."""
    return isinstance(value, (str, os.PathLike)) and (
        Path(value).suffix.lower() in MANIFEST_SUFFIXES
    )


def read_source(
    source: Any,
    *,
    classes: Sequence[str] | None = None,
    on_corrupt: OnCorrupt = "skip",
    verify: bool = True,
    training: bool = False,
    seen: Seen | None = None,
) -> ImageFolder:
    """The images of ``source`` — an image folder, a manifest or a Hugging Face ``Dataset``
    (see the module's docstring) — as an :class:`~zoo.adaptation.data.ImageFolder`.

    The arguments mean what they mean for
    :func:`~zoo.adaptation.data.scan_image_folder`: ``classes`` fixes the class list (a label
    outside it is an error), ``training`` refuses fewer than 2 classes and a class of
    ``classes`` without images, ``seen`` (shared with an earlier read) leaves out what was
    taken already.
    """
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', not {on_corrupt!r}")
    seen = {} if seen is None else seen
    options = {"on_corrupt": on_corrupt, "verify": verify, "training": training, "seen": seen}
    if is_dataset(source):
        return read_dataset(source, classes=classes, **options)
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            "the images must be an image folder, a CSV or JSONL manifest or a Hugging Face "
            f"dataset, not {type(source).__name__}"
        )
    if is_manifest(source) and not os.path.isdir(os.path.expanduser(source)):
        return read_manifest(source, classes=classes, **options)
    return scan_image_folder(source, classes=classes, **options)


def dataset_splits(train: Any, val: Any, val_split: float | None) -> tuple[Any, Any]:
    """``(train, val)`` with a ``DatasetDict`` given as ``train`` replaced by its ``train``
    split and its validation split (:data:`VALIDATION_SPLITS`), when neither ``val`` nor
    ``val_split`` is given; anything else is returned as it is."""
    dicts = frozenset({"DatasetDict"})
    if is_dataset(val, dicts):
        raise DataError(
            f"val is a DatasetDict of the splits {list(val)}: pass the split to validate on "
            "(val=dataset['validation'])"
        )
    if not is_dataset(train, dicts):
        return train, val
    if "train" not in train:
        raise DataError(
            f"the DatasetDict has no 'train' split (its splits: {list(train)}): pass the split "
            "to train on (train=dataset['name'])"
        )
    held = [name for name in VALIDATION_SPLITS if name in train]
    if held and (val is not None or val_split):
        given = "val" if val is not None else "val_split"
        raise DataError(
            f"the DatasetDict has a {held[0]!r} split, and {given} is given too: pass "
            f"train=dataset['train'] to use {given}, or leave {given} out to validate on "
            f"{held[0]!r}"
        )
    return train["train"], (train[held[0]] if held else val)


# ---------------------------------------------------------------- manifests


@dataclass
class _Rows:
    """The images a source lists, by class name: ``found[name]`` is (images, left out)."""

    where: str
    classes: tuple[str, ...] | None
    seen: Seen
    found: dict[str, tuple[list[Sample], list[SkippedFile]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._known = frozenset(self.classes or ())

    def add(self, sample: Sample, key: int | bytes | None, label: str, at: str) -> None:
        """``sample`` of class ``label`` (listed ``at``, for the error when the class is not
        one of ``classes``); a second copy of an image (``key`` already seen) is left out."""
        if self.classes is not None and label not in self._known:
            raise DataError(
                f"{at}: the label {label!r} is not one of the classes "
                f"({', '.join(self.classes)}); fix the label, or the classes"
            )
        images, left_out = self.found.setdefault(label, ([], []))
        if key is None or first_time(self.seen, key, sample, left_out):
            images.append(sample)

    def folder(
        self, root: Path | str, *, on_corrupt: OnCorrupt, verify: bool, training: bool
    ) -> ImageFolder:
        classes = self.classes or tuple(sorted(self.found))
        if training:
            self._check_training(classes)
        return collect(
            root,
            classes,
            {name: self.found[name] for name in classes if name in self.found},
            on_corrupt=on_corrupt,
            verify=verify,
            where=lambda name: repr(name),
            empty=lambda which: (
                f"{self.where}: class(es) without readable images: {which}; "
                "fix or remove their rows"
            ),
        )

    def _check_training(self, classes: Sequence[str]) -> None:
        present = [c for c in classes if c in self.found]
        if len(present) < 2:
            shown = f"a single class, {present[0]!r}" if present else "no images"
            raise DataError(
                f"{self.where} has {shown}: a classifier needs at least 2 classes (one class "
                "is always predicted, at 100 %); add images of every other class"
            )
        missing = [c for c in classes if c not in self.found]
        if missing:
            raise DataError(
                f"{self.where} has no images of class(es) {', '.join(map(repr, missing))}: a "
                "class without training images is never learned; add images of it, or leave "
                "it out of classes="
            )


def read_manifest(
    manifest: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    on_corrupt: OnCorrupt = "skip",
    verify: bool = True,
    training: bool = False,
    seen: Seen | None = None,
) -> ImageFolder:
    """The images a CSV or JSONL manifest lists (see the module's docstring); each row's
    label is a class name (sorted, like class folders', unless ``classes`` is given)."""
    file = Path(manifest).expanduser()
    rows = _Rows(f"manifest {str(file)!r}", _class_list(classes), {} if seen is None else seen)
    for line, path, label in _manifest_rows(file):
        at = f"{file}: line {line}"
        try:
            image = path_in(file.parent, path, what="the path")
        except ZooError as exc:
            raise DataError(f"{at}: {exc}") from None
        try:
            key: int | None = file_key(os.stat(image))
        except OSError:  # missing or unreadable: opening it says so (skipped, or an error)
            key = None
        rows.add(image, key, label, at)
    return rows.folder(file, on_corrupt=on_corrupt, verify=verify, training=training)


def _class_list(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(str(c) for c in classes) if classes is not None else None


def _manifest_rows(file: Path) -> Iterator[tuple[int, object, str]]:
    """``(line, path, label)`` of each row of ``file``, read through the trust rule; the label
    checked (:func:`_label`), the path as it is written."""
    try:
        raw = read_bytes_in(file.parent, file.name, max_bytes=MAX_MANIFEST_BYTES, what="a manifest")
    except ModelNotFoundError:
        raise DataError(f"manifest {str(file)!r} does not exist") from None
    except ZooError as exc:
        raise DataError(f"cannot read manifest {str(file)!r}: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{file}: line {line}: not UTF-8 text; save it as UTF-8") from None
    del raw
    if file.suffix.lower() == ".csv":
        yield from _csv_rows(file, text)
    else:
        yield from _jsonl_rows(file, text)


def _csv_rows(file: Path, text: str) -> Iterator[tuple[int, object, str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [cell.strip() for cell in next(reader, [])]
        if "path" not in header or "label" not in header:
            shown = ", ".join(repr(c[:40]) for c in header[:5]) or "nothing"
            raise DataError(
                f"{file}: line 1: a CSV manifest starts with a header row naming the columns "
                f"path and label (found {shown}); add the row `path,label`"
            )
        where = {name: header.index(name) for name in ("path", "label")}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            values = {}
            for name, column in where.items():
                if column >= len(row):
                    raise DataError(
                        f"{file}: line {line}: no {name} (the row has {len(row)} column(s), "
                        f"the header names {name} as column {column + 1})"
                    )
                values[name] = row[column].strip()
            yield line, values["path"], _label(values["label"], file, line)
    except csv.Error as exc:
        raise DataError(f"{file}: line {reader.line_num}: not valid CSV ({exc})") from None


def _jsonl_rows(file: Path, text: str) -> Iterator[tuple[int, object, str]]:
    for line, content in enumerate(text.split("\n"), 1):
        if not content.strip():
            continue
        try:
            row = checks.loads(content, "the row")
        except checks.Invalid as exc:
            raise DataError(f"{file}: line {line}: {exc}") from None
        if not isinstance(row, dict):
            raise DataError(
                f"{file}: line {line}: a JSONL manifest holds one object a line, "
                f'{{"path": ..., "label": ...}}, not a {type(row).__name__}'
            )
        for name in ("path", "label"):
            if name not in row:
                raise DataError(f"{file}: line {line}: no {name!r} key (it has {sorted(row)[:5]})")
        yield line, row["path"], _label(row["label"], file, line)


def _label(value: object, file: Path, line: int) -> str:
    """A manifest row's label as a class name: a text (or an integer) naming one class."""
    at = f"{file}: line {line}"
    if isinstance(value, list) or (isinstance(value, str) and "|" in value):
        raise DataError(
            f"{at}: the label {short_repr(value)} holds several labels; zoo trains "
            "single-label classifiers (one class an image), multi-label data is out of scope: "
            "give each row one label"
        )
    if checks.is_int(value):
        value = str(value)
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{at}: the label is empty; give each row its class name")
    try:
        return checks.text(value, "the label", max_len=MAX_NAME_LENGTH)
    except checks.Invalid as exc:
        raise DataError(f"{at}: {exc}, and class names are saved with the model") from None


# ---------------------------------------------------------------- Hugging Face datasets


@dataclass(frozen=True, eq=False)
class DatasetImage:
    """The encoded image of row ``index`` of a dataset whose ``column`` is not decoded
    (``datasets.Image(decode=False)``); read when opened, checked as any image file is."""

    rows: Any
    index: int
    column: str
    name: str

    def open(self) -> BinaryIO:
        value = self.rows[self.index][self.column]
        data = value.get("bytes") if isinstance(value, dict) else None
        if not isinstance(data, bytes):
            raise ZooError(f"{self.name}: holds no image")
        return io.BytesIO(data)

    def __str__(self) -> str:
        return self.name


def _datasets() -> Any:
    """The ``datasets`` module; a :class:`~zoo.DataError` naming the extra when missing."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            "reading a Hugging Face dataset needs the datasets package, which is not "
            f"installed: {DATASETS_EXTRA} (or pip install datasets)"
        ) from None
    return datasets


def read_dataset(
    dataset: Any,
    *,
    classes: Sequence[str] | None = None,
    on_corrupt: OnCorrupt = "skip",
    verify: bool = True,
    training: bool = False,
    seen: Seen | None = None,
) -> ImageFolder:
    """The images of a Hugging Face ``Dataset`` and their class names (its ``ClassLabel``'s
    names, in the feature's order unless ``classes`` is given)."""
    datasets = _datasets()
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"this {type(dataset).__name__} cannot be used here: pass a datasets.Dataset (a "
            "split of a DatasetDict; a streaming dataset loaded without streaming=True)"
        )
    split = getattr(dataset, "split", None)
    where = (
        f"dataset split {str(split)!r}"
        if split is not None
        else f"the {'training ' if training else ''}dataset"
    )
    image_column, label_column = _columns(dataset, datasets, where)
    names = [str(n) for n in dataset.features[label_column].names]
    for name in names:
        try:
            checks.text(name, "the class name", max_len=MAX_NAME_LENGTH)
        except checks.Invalid as exc:
            raise DataError(f"{where}: {exc}, and class names are saved with the model") from None
    rows = _Rows(where, _class_list(classes) or tuple(names), {} if seen is None else seen)
    table = dataset.select_columns([image_column, label_column]).cast_column(
        image_column, datasets.Image(decode=False)
    )
    for start in range(0, len(table), _ROWS_AT_ONCE):
        batch = table[start : start + _ROWS_AT_ONCE]
        for index, (image, label) in enumerate(
            zip(batch[image_column], batch[label_column], strict=True), start
        ):
            at = f"{where} row {index}"
            if not checks.is_int(label) or not 0 <= label < len(names):
                raise DataError(
                    f"{at}: no label ({label!r}); every row of a split to train or validate "
                    "on needs one"
                )
            sample, key = _row_image(table, index, image_column, image, at)
            rows.add(sample, key, names[label], at)
    return rows.folder(where, on_corrupt=on_corrupt, verify=verify, training=training)


def _row_image(
    table: Any, index: int, column: str, value: Any, at: str
) -> tuple[Sample, int | bytes | None]:
    """A row's image and its identity: encoded bytes held in the row (identified by their
    hash), or the file the row names."""
    value = value if isinstance(value, dict) else {}
    data, path = value.get("bytes"), value.get("path")
    if isinstance(data, bytes):
        return DatasetImage(table, index, column, at), hashlib.sha256(data).digest()
    if isinstance(path, str) and path:
        file = Path(path)
        try:
            return file, file_key(os.stat(file))
        except OSError:  # missing or unreadable: opening it says so
            return file, None
    return DatasetImage(table, index, column, at), None  # opening it says it holds none


def _columns(dataset: Any, datasets: Any, where: str) -> tuple[str, str]:
    """The image column and the class-label column of ``dataset``: the one of each kind."""
    features = dataset.features
    images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
    labels_of = datasets.ClassLabel
    labels = [n for n, f in features.items() if isinstance(f, labels_of)]
    lists = [n for n, f in features.items() if isinstance(getattr(f, "feature", None), labels_of)]
    pick = "pick one with dataset.select_columns([IMAGE, LABEL])"
    if len(images) != 1:
        found = f"the image columns {images}" if images else "no image column"
        raise DataError(
            f"{where} has {found} (columns: {list(features)}); it needs one datasets.Image "
            f"column: {pick if images else 'cast_column(NAME, datasets.Image())'}"
        )
    if not labels and lists:
        raise DataError(
            f"{where}: the column {lists[0]!r} holds several labels a row; zoo trains "
            "single-label classifiers (one class an image), multi-label data is out of scope"
        )
    if len(labels) != 1:
        found = f"the ClassLabel columns {labels}" if labels else "no ClassLabel column"
        how = pick if labels else "dataset.class_encode_column(LABEL) makes one of a column"
        raise DataError(
            f"{where} has {found} (columns: {list(features)}); it needs one datasets.ClassLabel "
            f"column, whose names are the class names: {how}"
        )
    return images[0], labels[0]
