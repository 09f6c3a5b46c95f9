"""Images for adaptation: class folders, corrupt files, splits and timm transforms.

An image folder holds one sub-folder per class (``data/cat/1.jpg``, ``data/dog/7.png``); class
names are the sub-folder names, sorted. Hidden entries (``.git``) are ignored, and so are files
whose extension is not an image one. Images inside a class folder may sit in nested folders.

Image files are untrusted input (a downloaded data set, a folder of photos someone sent). Every
image is opened the one way :func:`load_image` and the scan share: a regular file only (a FIFO
or a device named ``x.png`` is refused before a byte is read), read by PIL only as one of
:data:`IMAGE_FORMATS` (a PostScript file named ``.png`` is never handed to Ghostscript), and
refused from its header, before any pixel is decoded, when it has more than
:data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb) or a side more than
:data:`MAX_ASPECT_RATIO` times the other (a 1,000,000 x 1 image, which resizing would blow up);
a file over :data:`MAX_IMAGE_BYTES` is refused before PIL reads it.

Folders are walked without following links to folders below a class folder (a loop such as
``cat/again -> .`` is listed, never followed; a class folder itself may be a link), each folder
once and each file once (a hard link or a file link to an image already found is left out), so
a sample can never sit in both the training and the validation split.

Corrupt images: while scanning, every image file is opened as above and checked with PIL's
``verify()``. A file that fails is **skipped and counted** by default (:attr:`ImageFolder.skipped`
names each one with the reason; the CLI prints a warning); ``on_corrupt="error"`` makes the
first such file a :class:`~zoo.DataError` naming it instead. A linked folder or a second copy of
a file is listed in ``skipped`` too (never an error). A file that passes the check but still
cannot be decoded while training (a truncated JPEG body) stops training with a
:class:`~zoo.DataError` naming the file.

Transforms come from the backbone's input config (timm's data config, ``resolve_data_config``)
through ``timm.data.create_transform``: augmentation (random resized crop, flip, colour jitter)
for training, resize + centre crop for evaluation.
"""

from __future__ import annotations

import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from torch.utils.data import Dataset

from zoo.core import checks
from zoo.core.record import record_of, unwrap
from zoo.core.specs import InputConfig
from zoo.errors import AdaptArgumentError, DataError, ModelNotFoundError, ZooError
from zoo.io.fileformat import open_regular

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from zoo.adaptation.config import Augment

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)
#: The formats PIL may read an image file as, whatever its extension (``PPM`` covers
#: ``.pgm``/``.ppm``). Anything else — PostScript (which PIL hands to Ghostscript), PDF, ICO,
#: and PIL's dozens of other plugins — is refused before its reader runs.
IMAGE_FORMATS: tuple[str, ...] = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")
#: The most pixels an image may have (8192 x 8192, 192 MiB as RGB), checked from its header
#: before any pixel is decoded: a few-KB file can claim billions (a decompression bomb).
MAX_IMAGE_PIXELS = 8192 * 8192
#: The largest image file read (512 MiB): the largest image zoo accepts, uncompressed at 16-bit
#: RGBA (8 bytes a pixel). Checked before PIL sees the file, which reads a WebP file whole.
MAX_IMAGE_BYTES = 8 * MAX_IMAGE_PIXELS
#: The most one side of an image may be times the other, checked from its header: resizing the
#: short side of a 1,000,000 x 1 image (1 megapixel) to 256 would make 256 million x 256.
MAX_ASPECT_RATIO = 100
OnCorrupt = Literal["skip", "error"]


class HeldImage(Protocol):
    """An image that is not a file of its own (a row of a Hugging Face dataset,
    :mod:`zoo.adaptation.sources`): its encoded bytes, opened on demand; ``str()`` names it."""

    def open(self) -> BinaryIO: ...


#: One image of a source: a file, or an image held elsewhere.
Sample = Path | HeldImage


@dataclass(frozen=True)
class SkippedFile:
    """A file left out, with the reason: an image that cannot be read (or is refused), a
    second copy of a file already found, a link to a folder (not followed)."""

    path: Sample
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass(frozen=True)
class ImageFolder:
    """A scanned image source: class names, ``(image, class index)`` samples, skipped files.

    Every source zoo reads becomes one — a class folder (:func:`scan_image_folder`), a
    manifest or a Hugging Face dataset (:mod:`zoo.adaptation.sources`) — so the split, the
    caches, ``compare`` and the loaders never tell them apart. ``root`` is where it was read
    from (the folder, the manifest, or the dataset's description)."""

    root: Path | str
    classes: tuple[str, ...]
    samples: tuple[tuple[Sample, int], ...]
    skipped: tuple[SkippedFile, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def counts(self) -> dict[str, int]:
        """Images per class name (classes without images in this folder count 0)."""
        counter = Counter(self.targets)
        return {name: counter.get(i, 0) for i, name in enumerate(self.classes)}

    @property
    def samples_per_class(self) -> int:
        """The mean number of images per class, rounded (what ``policy="auto"`` is told)."""
        present = [n for n in self.counts().values() if n]
        return round(sum(present) / len(present)) if present else 0


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _visible(entries: Iterable[os.DirEntry]) -> list[os.DirEntry]:
    return [e for e in entries if not e.name.startswith(".")]


class _Refused(ValueError):
    """Why an image file is not read (the message is the reason, without the path)."""


@contextmanager
def _open_image(path: Sample) -> Iterator[Any]:
    """``path`` (a file, or an image held elsewhere) opened as an image of
    :data:`IMAGE_FORMATS` with its size checked from the header, nothing decoded yet;
    :class:`_Refused` (or PIL's error) says why not."""
    from PIL import Image

    try:
        file = open_regular(path) if isinstance(path, Path) else path.open()
    except ModelNotFoundError:
        raise _Refused("the file does not exist (or is a link to nothing)") from None
    except ZooError as exc:  # a FIFO, a device, a socket: refused before a byte is read
        raise _Refused(str(exc).removeprefix(f"{path}: ")) from None
    with file, warnings.catch_warnings():
        size = file.seek(0, os.SEEK_END)
        file.seek(0)
        if size > MAX_IMAGE_BYTES:
            raise _Refused(
                f"{size:,} bytes, more than any image zoo accepts needs ({MAX_IMAGE_BYTES:,}, "
                "MAX_IMAGE_BYTES); not read"
            )
        # PIL warns from 89M pixels and refuses from 179M; zoo's own check below is stricter
        # and names the size, so the warning is not printed and the refusal is zoo's reason
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(file, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError:
            raise _Refused(
                f"its header claims more pixels than {MAX_IMAGE_PIXELS:,} (MAX_IMAGE_PIXELS): "
                "a decompression bomb or an image too large to use; not decoded"
            ) from None
        with image:
            _check_size(image.size)
            yield image


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise _Refused(f"{width} x {height} pixels: an image without pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise _Refused(
            f"{width} x {height} pixels, more than {MAX_IMAGE_PIXELS:,} (MAX_IMAGE_PIXELS): a "
            "decompression bomb or an image too large to use; not decoded"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise _Refused(
            f"{width} x {height} pixels, one side more than {MAX_ASPECT_RATIO} times the other "
            "(MAX_ASPECT_RATIO): resizing it would need far more memory than it holds; not "
            "decoded"
        )


def _reason(exc: Exception) -> str:
    """Why an image could not be read, for a skipped file or an error message."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        formats = ", ".join(IMAGE_FORMATS)
        return f"not an image of a format zoo reads ({formats}), or its header is damaged"
    return f"{type(exc).__name__}: {exc}"


def _check_image(path: Sample) -> str | None:
    """None when ``path`` opens as an image (see :func:`_open_image`) and PIL verifies it;
    otherwise the reason."""
    try:
        with _open_image(path) as img:
            img.verify()
    except Exception as exc:  # PIL raises many kinds on hostile bytes; each is a reason
        return _reason(exc)
    return None


#: A file's or folder's identity, ``st_dev`` and ``st_ino`` in one int (smaller than a tuple:
#: one entry per image), or a held image's content hash -> where it was first found.
Seen = dict[int | bytes, Sample]


def first_time(seen: Seen, key: int | bytes, sample: Sample, skipped: list[SkippedFile]) -> bool:
    """Whether ``key`` (a file's identity, :data:`Seen`) is met for the first time; if not,
    ``sample`` is listed in ``skipped`` as a second copy of what was found first."""
    first = seen.setdefault(key, sample)
    if first is not sample:
        what = "image" if isinstance(key, bytes) else "file or folder"  # bytes: a content hash
        skipped.append(SkippedFile(sample, f"the same {what} as {str(first)!r}"))
    return first is sample


def file_key(stat: os.stat_result) -> int:
    """The identity of a file or folder in :data:`Seen`."""
    return stat.st_dev << 64 | stat.st_ino


def list_images(
    folder: Path, *, recursive: bool = True, seen: Seen | None = None
) -> tuple[list[Path], list[SkippedFile]]:
    """The image files in ``folder`` (and its sub-folders with ``recursive``) in sorted order,
    each file once, and what was left out with the reason.

    Hidden entries and files without an image extension are ignored. ``folder`` itself may be
    a link; links to folders inside it are not followed (listed as skipped), so a link loop
    cannot multiply the files or stop the walk; a folder or file reached twice (a hard link, a
    link to a file already found, or one in ``seen``, shared by calls) is listed once. Links to
    files are followed (git-annex and DVC keep data sets as links). The walk keeps its own
    stack: any depth of nesting is fine.
    """
    seen = {} if seen is None else seen
    found: list[Path] = []
    skipped: list[SkippedFile] = []

    def once(path: Path, stat: os.stat_result) -> bool:
        return first_time(seen, file_key(stat), path, skipped)

    try:
        top = os.stat(folder)
    except OSError as exc:
        return [], [SkippedFile(folder, f"cannot read the folder: {exc.strerror or exc}")]
    stack = [folder] if once(folder, top) else []
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(_visible(it), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(SkippedFile(current, f"cannot read the folder: {exc.strerror or exc}"))
            continue
        folders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and once(path, entry.stat(follow_symlinks=False)):
                        folders.append(path)
                elif entry.is_symlink() and entry.is_dir():
                    if recursive:
                        skipped.append(SkippedFile(path, "a link to a folder, not followed"))
                elif _is_image(path) and once(path, entry.stat()):
                    found.append(path)
            except OSError:  # a link to nothing, or gone: opening it says so
                if _is_image(path):
                    found.append(path)
        stack.extend(reversed(folders))
    return found, skipped


def scan_image_folder(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    on_corrupt: OnCorrupt = "skip",
    verify: bool = True,
    training: bool = False,
    seen: Seen | None = None,
) -> ImageFolder:
    """Scan ``root`` (one sub-folder per class) into an :class:`ImageFolder`.

    ``classes`` fixes the class list and its order (a validation folder must use the training
    classes); a sub-folder not among them is an error. Raises :class:`~zoo.DataError` for a
    missing, unreadable or empty folder, a class folder without images, and (with
    ``on_corrupt="error"``) a file PIL cannot read. ``verify=False`` skips the per-file check.
    ``training=True`` (a folder to train on) also refuses fewer than 2 class folders and a
    class of ``classes`` without a folder — checked before any image is opened. Each file and
    folder is taken once (see :func:`list_images`); ``seen``, shared with an earlier scan (the
    training folder's), also leaves out what that scan took, so that no image is both trained
    and validated on.
    """
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', not {on_corrupt!r}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"image folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(
            f"{str(path)!r} is not a folder: pass a folder with one sub-folder per class, or "
            "a manifest (a .csv or .jsonl file of path,label rows)"
        )
    try:
        with os.scandir(path) as it:
            entries = _visible(it)
    except OSError as exc:
        raise DataError(f"cannot read image folder {str(path)!r}: {exc.strerror or exc}") from exc
    class_dirs = sorted(e.name for e in entries if e.is_dir())
    if not class_dirs:
        loose = [e.name for e in entries if e.is_file() and _is_image(Path(e.name))]
        if loose:
            raise DataError(
                f"image folder {str(path)!r} has {len(loose)} image(s) but no class sub-folders: "
                f"put each class's images in a sub-folder named after the class "
                f"(e.g. {str(path / 'cat' / loose[0])!r})"
            )
        raise DataError(
            f"image folder {str(path)!r} is empty: expected one sub-folder per class "
            "holding that class's images"
        )
    if classes is None:
        _check_class_names(path, class_dirs)
        class_list = tuple(class_dirs)
    else:
        class_list = tuple(classes)
        unknown = [c for c in class_dirs if c not in class_list]
        if unknown:
            raise DataError(
                f"image folder {str(path)!r} has class folder(s) {', '.join(map(repr, unknown))} "
                f"that the training data does not have (training classes: "
                f"{', '.join(class_list)})"
            )
    if training:
        _check_training_classes(path, class_dirs, class_list)
    seen = {} if seen is None else seen
    found = {name: list_images(path / name, seen=seen) for name in class_dirs}
    return collect(
        path,
        class_list,
        found,
        on_corrupt=on_corrupt,
        verify=verify,
        where=lambda name: repr(str(path / name)),
        empty=lambda which: (
            f"class folder(s) without readable images: {which}; add images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder"
        ),
    )


def collect(
    root: Path | str,
    classes: tuple[str, ...],
    found: Mapping[str, tuple[Sequence[Sample], Sequence[SkippedFile]]],
    *,
    on_corrupt: OnCorrupt,
    verify: bool,
    where: Callable[[str], str],
    empty: Callable[[str], str],
) -> ImageFolder:
    """The :class:`ImageFolder` of a source whose images were ``found``: class name ->
    (its candidate images in order, what was left out finding them). Each image is opened and
    checked (``verify``) the one way, and skipped or an error (``on_corrupt``) when it fails;
    a class with no readable image left is a :class:`~zoo.DataError` whose message is
    ``empty`` of those classes (``where(name)`` each, with the first file left out and why)."""
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[Sample, int]] = []
    skipped: list[SkippedFile] = []
    without: list[str] = []
    for name, (files, left_out) in found.items():
        start = len(skipped)  # what this class leaves out, for the error below
        skipped.extend(left_out)
        good = 0
        for file in files:
            reason = _check_image(file) if verify else None
            if reason is not None:
                if on_corrupt == "error":
                    raise DataError(
                        f"corrupt or unreadable image {str(file)!r} ({reason}); remove it, or "
                        "let zoo skip such files (on_corrupt='skip', the default)"
                    )
                skipped.append(SkippedFile(file, reason))
                continue
            samples.append((file, index[name]))
            good += 1
        if good == 0:
            shown = where(name)
            why = skipped[start : start + 1]  # the first file left out says why, if any
            without.append(f"{shown} ({str(why[0].path)!r}: {why[0].reason})" if why else shown)
    if without:
        raise DataError(empty(", ".join(without)))
    return ImageFolder(root, classes, tuple(samples), tuple(skipped))


def _check_class_names(path: Path, class_dirs: Sequence[str]) -> None:
    """Class names come from folder names, and a saved model's class names may not hold a
    control character or undecodable bytes: refused here, before any training."""
    for name in class_dirs:
        try:
            checks.text(name, "its name", max_len=None)
        except checks.Invalid as exc:
            raise DataError(
                f"class folder {str(path / name)!r}: {exc}, and class names are saved with the "
                "model; rename the folder"
            ) from None


def _check_training_classes(path: Path, class_dirs: Sequence[str], classes: Sequence[str]) -> None:
    """A training folder needs 2 classes or more, and a folder for every class it trains."""
    if len(class_dirs) < 2:
        raise DataError(
            f"training folder {str(path)!r} has a single class folder, {class_dirs[0]!r}: a "
            "classifier needs at least 2 classes (one class is always predicted, at 100 %); "
            "add a sub-folder of images for every other class"
        )
    missing = [c for c in classes if c not in class_dirs]
    if missing:
        raise DataError(
            f"training folder {str(path)!r} has no folder for class(es) "
            f"{', '.join(map(repr, missing))}: a class without training images is never "
            "learned; add the folder(s) or leave the class(es) out of classes="
        )


#: How many training images :func:`median_side` reads the header of (spread over the folder).
SIDE_SAMPLE = 64


def median_side(folder: ImageFolder, sample: int = SIDE_SAMPLE) -> int | None:
    """The median of the shorter side of up to ``sample`` images spread over ``folder`` (their
    headers only: nothing is decoded); None when none can be read."""
    samples = folder.samples
    step = max(1, len(samples) // sample)
    sides = []
    for image_of, _label in samples[::step][:sample]:
        try:
            with _open_image(image_of) as image:
                sides.append(min(image.size))
        except Exception:  # the scan already listed it, or training will say what is wrong
            continue
    return sorted(sides)[len(sides) // 2] if sides else None


def split_folder(
    folder: ImageFolder, fraction: float, *, seed: int = 0
) -> tuple[ImageFolder, ImageFolder]:
    """Split ``folder`` into (train, val), stratified: ``fraction`` of each class goes to val.

    Every class keeps at least one training image; a class with a single image has none in val.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the validation split must be between 0 and 1 (exclusive), not {fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[Sample, int]]] = {}
    for sample in folder.samples:
        by_class.setdefault(sample[1], []).append(sample)
    train: list[tuple[Sample, int]] = []
    val: list[tuple[Sample, int]] = []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * fraction)))
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    train.sort(key=lambda s: (s[1], str(s[0])))
    val.sort(key=lambda s: (s[1], str(s[0])))
    return (
        replace(folder, samples=tuple(train)),
        replace(folder, samples=tuple(val), skipped=()),
    )


# ---------------------------------------------------------------- datasets


def load_image(path: str | os.PathLike[str] | HeldImage) -> Any:
    """Open ``path`` (or an image held elsewhere) as an RGB PIL image; a
    :class:`~zoo.DataError` names a file that fails or is refused (not a regular file, not one
    of :data:`IMAGE_FORMATS`, over :data:`MAX_IMAGE_PIXELS` or :data:`MAX_ASPECT_RATIO`)."""
    try:
        source = Path(path) if isinstance(path, (str, os.PathLike)) else path
        with _open_image(source) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many kinds on hostile bytes; each is a reason
        raise DataError(f"cannot decode image {str(path)!r}: {_reason(exc)}") from exc


class ImageDataset(Dataset):
    """A map-style torch dataset over ``(image, label)`` samples with a transform.

    Has ``classes``, ``targets`` and ``transform`` like torchvision's ``ImageFolder``. An item
    is asked for by index, or by ``(index, seed)`` (what :class:`SeededSampler` yields): the
    transform then draws its randomness from generators seeded with ``seed``, so an augmented
    image depends on the seed alone — not on which worker process made it, nor on what that
    worker made before.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Sample, int]],
        classes: Sequence[str],
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    @classmethod
    def from_folder(
        cls, folder: ImageFolder, transform: Callable[[Any], Any] | None = None
    ) -> ImageDataset:
        return cls(folder.samples, folder.classes, transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = load_image(path)
        if self.transform is not None:
            image = self.transform(image) if seed is None else seeded(self.transform, image, seed)
        return image, label


def seeded(transform: Callable[[Any], Any], image: Any, seed: int) -> Any:
    """``transform(image)`` with the generators transforms draw from (Python's ``random``,
    numpy's global one, torch's CPU default generator: timm's and torchvision's transforms use
    these) seeded with ``seed``. In the training process (no loader workers) each is restored
    afterwards, so its random streams go on as if nothing had been drawn; a loader worker's
    generators serve its images only, and are not (restoring numpy's costs about 50 us)."""
    import numpy as np
    import torch
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        _seed_generators(seed)
        return transform(image)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.default_generator.get_state()
    _seed_generators(seed)
    try:
        return transform(image)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.default_generator.set_state(torch_state)


def _seed_generators(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


# ---------------------------------------------------------------- transforms


def input_config_of(model: nn.Module) -> InputConfig:
    """The input config of ``model``: ``model.zoo.input_config``, else timm's data config."""
    record = record_of(model)
    if record is not None and isinstance(record.input_config, InputConfig):
        return record.input_config
    model = unwrap(model)
    try:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
    except Exception:  # a model timm knows nothing about: ImageNet defaults
        return InputConfig()
    return InputConfig.from_dict(
        {
            k: cfg[k]
            for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
            if k in cfg and cfg[k] is not None
        }
    )


def with_overrides(
    config: InputConfig,
    *,
    image_size: int | Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> InputConfig:
    """``config`` with ``image_size`` (an int or ``(h, w)``) and any other fields replaced."""
    data = config.to_dict()
    if overrides:
        unknown = set(overrides) - set(data)
        if unknown:
            raise DataError(
                f"unknown input config field(s) {', '.join(sorted(unknown))}; known: "
                + ", ".join(sorted(data))
            )
        data.update(overrides)
    if image_size is not None:
        if isinstance(image_size, int):
            size = [int(image_size)] * 2
        else:
            size = [int(v) for v in image_size]
        if len(size) != 2 or min(size) < 1:
            raise DataError(
                f"image size must be a positive int or (height, width), not {image_size!r}"
            )
        data["input_size"] = [int(data["input_size"][0]), *size]
    return InputConfig.from_dict(data)


def build_transform(
    config: InputConfig, *, train: bool = False, augment: Augment | None = None
) -> Callable[[Any], torch.Tensor]:
    """timm's transform for ``config``: augmented as ``augment`` says when ``train`` (timm's
    ``create_transform`` with :meth:`~zoo.adaptation.config.Augment.transform_options`), else
    plain (resize and centre crop)."""
    from timm.data import create_transform

    common = {
        "input_size": tuple(config.input_size),
        "mean": tuple(config.mean),
        "std": tuple(config.std),
        "interpolation": config.interpolation,
    }
    if train and augment is not None:
        return create_transform(is_training=True, **common, **augment.transform_options())
    return create_transform(
        is_training=False, crop_pct=config.crop_pct, crop_mode=config.crop_mode, **common
    )


def check_auto_augment(text: str | None) -> None:
    """Refuse an ``auto_augment`` text timm's parser does not read (``rand-m9-mstd0.5``,
    ``augmix-m5``, ``original``…), with an :class:`~zoo.AdaptArgumentError` naming it —
    before any data is read."""
    if text is None:
        return
    from timm.data import create_transform

    try:
        create_transform(input_size=(3, 8, 8), is_training=True, auto_augment=text)
    except Exception as exc:  # timm's parser asserts or raises ValueError/KeyError
        rule = (
            "a timm auto-augment text: rand-m9-mstd0.5 (RandAugment), augmix-m5 (AugMix), "
            "original or v0 (AutoAugment) — timm's parser said: " + (str(exc) or type(exc).__name__)
        )
        raise AdaptArgumentError("auto_augment", text, rule) from None


_DETERMINISTIC = frozenset(
    {
        "CenterCrop",
        "CenterCropOrPad",
        "Compose",
        "ConvertImageDtype",
        "Grayscale",
        "MaybePILToTensor",
        "MaybeToTensor",
        "Normalize",
        "PILToTensor",
        "Pad",
        "Resize",
        "ResizeKeepRatio",
        "ToDtype",
        "ToImage",
        "ToPILImage",
        "ToPureTensor",
        "ToTensor",
    }
)


def is_random_transform(transform: Any) -> bool:
    """Whether ``transform`` may give a different tensor for the same image twice.

    Known deterministic torchvision/timm steps (resize, crop, to-tensor, normalize) are not
    random; anything else — ``Random*``, jitter, auto-augment, or a step zoo does not know —
    counts as random, so a feature cache is never built on augmented images.
    """
    if transform is None:
        return False
    steps = getattr(transform, "transforms", None)
    if steps is not None and type(transform).__name__ == "Compose":
        return any(is_random_transform(step) for step in steps)
    return type(transform).__name__ not in _DETERMINISTIC


def dataset_transform(dataset: Any) -> tuple[bool, Any]:
    """``(known, transform)`` for a dataset (looks through ``Subset``); known=False if hidden."""
    seen = 0
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices") and seen < 8:
        dataset = dataset.dataset
        seen += 1
    if hasattr(dataset, "transform"):
        if getattr(dataset, "target_transform", None) is not None:
            return False, None
        return True, dataset.transform
    if hasattr(dataset, "tensors"):  # TensorDataset: plain tensors, nothing random
        return True, None
    return False, None


# ---------------------------------------------------------------- loaders


@dataclass
class LoaderSpec:
    """How to build data loaders (kept so that distributed training can rebuild them)."""

    batch_size: int = 32
    num_workers: int = 0
    seed: int = 0
    #: pinned batches (on a GPU: the copy to the device then overlaps the compute)
    pin_memory: bool = False
    #: workers that live as long as the loader (started once, not again each epoch)
    persistent: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class SeededSampler:
    """``sampler``'s indices, each paired with a seed for the image's augmentation:
    ``(index, seed)``, the seed ``epoch_seed + index``, the epoch's seed drawn from
    ``generator`` when an epoch's iteration starts.

    What an augmented image looks like is then a function of the generator's state and the
    index alone: the same with 0, 2 or 8 loader workers, with workers that persist over the
    epochs (started once: on a CPU, starting them again each epoch copies the training
    process's memory pages as it writes them, about 10 % of a resnet18 epoch on 2 cores) and in
    a resumed run, whose checkpoint restores ``generator``.
    """

    def __init__(self, sampler: Any, generator: torch.Generator) -> None:
        self.sampler = sampler
        self.generator = generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        import torch

        epoch_seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        for index in self.sampler:
            yield int(index), epoch_seed + int(index)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """The epoch for a sampler that shuffles by it (``DistributedSampler``)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def make_loader(
    dataset: Dataset,
    spec: LoaderSpec,
    *,
    shuffle: bool,
    sampler: Any = None,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` (seeded shuffling; ``sampler`` overrides it); its
    worker processes, if any, keep two batches each ready.

    The order is drawn from a generator seeded ``spec.seed`` that the sampler holds (a
    checkpoint saves and restores it: :func:`~zoo.adaptation.checkpoint.loader_generators`);
    the loader's own generator, which seeds its worker processes (once, for persistent
    workers), is another one, so that starting workers never moves the order. An
    :class:`ImageDataset` whose transform is random (augmentation) is read through a
    :class:`SeededSampler`: each image's augmentation is seeded from the order's generator."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

    generator = torch.Generator()
    generator.manual_seed(spec.seed)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else None
    if isinstance(dataset, ImageDataset) and is_random_transform(dataset.transform):
        sampler = SeededSampler(sampler or SequentialSampler(dataset), generator)
    workers_seed = torch.Generator()
    workers_seed.manual_seed(spec.seed)
    return DataLoader(
        dataset,
        batch_size=spec.batch_size,
        sampler=sampler,
        num_workers=spec.num_workers,
        drop_last=drop_last,
        generator=workers_seed,
        pin_memory=spec.pin_memory,
        persistent_workers=spec.persistent and spec.num_workers > 0,
        prefetch_factor=2 if spec.num_workers > 0 else None,
        **spec.extra,
    )


def stop_workers(*loaders: Any) -> None:
    """End the worker processes of ``loaders`` (data loaders, or None) now. torch ends a
    loader's persistent workers only when the loader is collected, which a traceback that
    holds it (a failed run in a notebook) puts off indefinitely."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # torch keeps persistent workers there
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
            loader._iterator = None


def dataset_targets(dataset: Any) -> list[int] | None:
    """The integer labels of a dataset that exposes them (``targets``, a ``TensorDataset``'s
    second tensor of integers); None when it doesn't."""
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "tensors") and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
        if labels.is_floating_point() or labels.is_complex() or labels.ndim != 1:
            return None
        targets = labels.tolist()
    if targets is None:
        return None
    try:
        return [int(t) for t in targets]
    except (TypeError, ValueError):
        return None


def class_counts_of(dataset: Any, num_classes: int) -> list[int] | None:
    """Images per class of a dataset that exposes ``targets`` (None when it doesn't)."""
    targets = dataset_targets(dataset)
    if targets is None:
        return None
    counter = Counter(targets)
    return [counter.get(i, 0) for i in range(num_classes)]
