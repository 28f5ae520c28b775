"""A page to look through a whole map store: a static site, written once, opened from disk.

:func:`view` writes a folder with ``index.html`` and everything it needs
(scripts, styles, thumbnails): no server, no network, nothing fetched. It opens
from disk in any browser (``file://``), in a notebook's file browser, or from any
static host. The page shows a grid of thumbnails (each sample's image with its
map over it, or the map alone when no images are given), a page at a time, and
sorts and filters them by class, predicted class, score, correctness,
agreement with a second store of the same dataset (two methods or two layers)
and how far each map's mass sits from the image's centre; a click opens a
sample's image, map and overlay (with an opacity slider), the other store's
map, and its record. A second tab summarizes each class: its mean map, its
accuracy, and how far off-centre its maps sit.

Thumbnails are packed into sprite sheets (JPEG, :data:`CELLS` x :data:`CELLS`
thumbnails each), so a store of 100,000 maps becomes a few thousand files,
not hundreds of thousands, and the browser loads a sheet only when a page
shows one of its thumbnails. Each sheet is written atomically, then a record
of what it was made from (the shards' digests, :meth:`camkit.MapStore.digest`,
and the options); a rerun into the same folder writes only the sheets that
are missing or out of date, so an interrupted build resumes. The images and
masks are not part of that record (they are functions): when they change,
write the site into a new folder.

The store is read through :class:`~camkit.MapStore` only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from camkit._engine import map_ops
from camkit._engine.option_checks import check_colormap
from camkit._store.files import output_folder, write_atomically
from camkit.datasets import MapStore
from camkit.errors import CamkitStorageError, CamkitTypeError, CamkitValueError

__all__ = ["CELLS", "ImageSource", "MaskSource", "view"]

CELLS = 8
"""Thumbnails per side of a sprite sheet (a sheet holds ``CELLS * CELLS``)."""

ImageSource = Callable[[int], Any]
"""``images(i)``: dataset sample ``i``'s image, a ``(C, H, W)`` tensor, an ``(H, W, C)`` array
or PIL image, or ``(H, W)``, with ``C`` 1 or 3; floats in [0, 1] or ``uint8``; at any size
(it is fitted to the map's shape). Other values are refused, not clipped."""

OPACITY = 0.5
"""The map's opacity over the image in the grid's thumbnails (the detail view has a slider)."""

SUMMARY = 48
"""The longer side, in pixels, of a class's mean map in the summary."""

MaskSource = Callable[[int], Any]
"""``masks(i)``: dataset sample ``i``'s object mask, ``(H, W)`` (a tensor or an array; nonzero
inside the object), at any size (it is resized to the map's shape, nearest neighbour)."""

_STATIC = ("index.html", "camkit-viewer.js", "camkit-viewer.css")


def view(
    store: MapStore | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    images: ImageSource | None = None,
    compare: MapStore | str | os.PathLike[str] | None = None,
    masks: MaskSource | None = None,
    classes: Sequence[str] | None = None,
    title: str | None = None,
    thumb: int = 80,
    cmap: str = "jet",
    progress: bool = True,
) -> Path:
    """Write a static site for looking through ``store``; return the path of its page.

    Args:
        store: A :class:`~camkit.MapStore`, or its folder.
        out: The folder to write (created if needed). A rerun writes only what is
            missing or out of date.
        images: ``images(i)``, the image of dataset sample ``i`` (see
            :data:`ImageSource`), shown under its map; without it the page shows
            the maps alone.
        compare: A second store of the same dataset (another method or layer): the
            page shows its map beside each sample's, and sorts by agreement, the
            Pearson correlation of the two maps (at thumbnail size).
        masks: ``masks(i)``, the object mask of dataset sample ``i`` (see
            :data:`MaskSource`): the page then shows how much of each map's mass
            lies inside the object (the energy-based pointing game), sorts by it,
            and lists the classes whose maps sit most outside their objects.
        classes: Class names, by class index, for the filters and the summary.
        title: The page's title (the store's folder by default).
        thumb: Thumbnail size in pixels (the longer side; the shorter is padded).
        cmap: The matplotlib colormap the maps are drawn in.
        progress: Show a progress bar.

    Returns:
        ``out/index.html``.

    Raises:
        CamkitValueError: If ``compare`` holds another dataset (another length or
            other stored samples), ``out`` is a file, or an option is out of range.
        CamkitStorageError: If a shard of a store is damaged (see
            :class:`~camkit.MapStore`), or ``out`` cannot be created.

    Example:
        >>> import tempfile
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> import camkit
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> data = TensorDataset(torch.rand(6, 1, 8, 8))
        >>> store = camkit.explain_dataset(camkit.GradCAM(model, "1"),
        ...                                DataLoader(data, batch_size=4), tempfile.mkdtemp(),
        ...                                progress=False)
        >>> page = camkit.view(store, tempfile.mkdtemp(), images=lambda i: data[i][0],
        ...                    progress=False)
        >>> page.name
        'index.html'
    """
    for option, folder in (("store", store), ("compare", compare)):
        if not isinstance(folder, (MapStore, str, os.PathLike)) and not (
            option == "compare" and folder is None
        ):
            raise CamkitTypeError(
                f"{option}: got {type(folder).__name__}; allowed: a MapStore or its folder"
                + (", or None" if option == "compare" else "")
            )
    if classes is not None and (
        isinstance(classes, str)
        or not isinstance(classes, Sequence)
        or not all(isinstance(c, str) for c in classes)
    ):
        raise CamkitTypeError(f"classes: got {classes!r}; allowed: a list of names, or None")
    if title is not None and not isinstance(title, str):
        raise CamkitTypeError(f"title: got {type(title).__name__}; allowed: a string, or None")
    check_colormap(cmap)
    folder = output_folder(out)
    main = store if isinstance(store, MapStore) else MapStore(store)
    other = None if compare is None else compare if isinstance(compare, MapStore) else (
        MapStore(compare)
    )  # fmt: skip
    if isinstance(thumb, bool) or not isinstance(thumb, int) or not 8 <= thumb <= 512:
        raise CamkitValueError(f"thumb: got {thumb!r}; allowed: an int from 8 to 512")
    for name, given in (("images", images), ("masks", masks)):
        if given is not None and not callable(given):
            raise CamkitTypeError(
                f"{name}: expected a function of the dataset index, got {type(given).__name__}"
            )
    indices = main.indices
    if other is not None and other.indices != indices:
        raise CamkitValueError(
            f"compare: {str(other.path)!r} holds other samples than {str(main.path)!r} "
            f"({len(other)} against {len(main)}); compare two stores of the same dataset"
        )
    try:
        for part in ("sheets", "cache"):
            (folder / part).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CamkitStorageError(
            f"out: cannot create {str(folder)!r} ({type(error).__name__}: {error})"
        ) from error
    layout = _Layout(main, other, images is not None, masks is not None, thumb, cmap)
    records = main.records()
    stats: list[dict[str, Any]] = []
    count = -(-len(indices) // (CELLS * CELLS))
    for sheet in tqdm(range(count), desc="writing the viewer", unit="sheet", disable=not progress):
        members = indices[sheet * CELLS * CELLS : (sheet + 1) * CELLS * CELLS]
        key = layout.sheet_key(members)
        done = _read_json(folder / "cache" / f"sheet-{sheet:04d}.json")
        if done.get("key") != key or not layout.files_exist(folder, sheet):
            targets = records["target"][sheet * CELLS * CELLS : (sheet + 1) * CELLS * CELLS]
            done = {
                "key": key,
                **layout.write_sheet(folder, sheet, members, targets, images, masks),
            }  # its files first, then this record of them: an interrupted build resumes
            _write(folder / "cache" / f"sheet-{sheet:04d}.json", json.dumps(done).encode())
        stats.append(done)
    data = _page_data(main, other, records, stats, classes, title, layout)
    _write(folder / "data.js", b"window.CAMKIT_VIEWER = " + json.dumps(data).encode() + b";\n")
    layout.write_summary(folder, data["summary"], count)
    for name in _STATIC:
        _write(folder / name, resources.files("camkit._viewer").joinpath(name).read_bytes())
    return folder / "index.html"


def _write(path: Path, data: bytes) -> None:
    write_atomically(path, path.parent, lambda handle: handle.write(data))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class _Layout:
    """How the sheets of one site are drawn, and what each sheet is made from."""

    def __init__(
        self,
        main: MapStore,
        other: MapStore | None,
        with_images: bool,
        with_masks: bool,
        thumb: int,
        cmap: str,
    ) -> None:
        self.main, self.other = main, other
        self.with_images, self.with_masks, self.thumb, self.cmap = (
            with_images,
            with_masks,
            thumb,
            cmap,
        )
        shape = tuple(main.map(main.indices[0]).shape) if main.indices else (1, 1)
        if len(shape) != 2:
            raise CamkitValueError(
                f"store: the viewer shows 2-D maps; {str(main.path)!r} holds maps of shape {shape}"
            )
        self.size = _fit(shape, thumb)
        self.summary_size = _fit(shape, SUMMARY)
        settings = [
            _config_key(main),
            None if other is None else _config_key(other),
            with_images,
            with_masks,
            thumb,
            cmap,
            CELLS,
        ]
        self.key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]

    def kinds(self) -> list[str]:
        """The sheets of each block of samples: the overlays the grid shows (with images),
        then the images, the maps and the other store's maps the detail view shows."""
        wanted = {"overlay": self.with_images, "image": self.with_images, "map": True,
                  "other": self.other is not None}  # fmt: skip
        return [kind for kind, on in wanted.items() if on]

    def sheet_key(self, members: Sequence[int]) -> str:
        """What a sheet is made from: the shards' checksums of its samples, in both stores."""
        parts = [self.main.digest(members)]
        if self.other is not None:
            parts.append(self.other.digest(members))
        return hashlib.sha256(json.dumps([self.key, members[:1], parts]).encode()).hexdigest()

    def files_exist(self, folder: Path, sheet: int) -> bool:
        names = [f"sheets/{kind}-{sheet:04d}.jpg" for kind in self.kinds()]
        return all((folder / n).is_file() for n in [*names, f"cache/classes-{sheet:04d}.npz"])

    def write_sheet(
        self,
        folder: Path,
        sheet: int,
        members: Sequence[int],
        targets: Tensor,
        images: ImageSource | None,
        masks: MaskSource | None,
    ) -> dict[str, Any]:
        """Draw and write a sheet's thumbnails; return its samples' statistics."""
        maps = torch.stack([self.main.map(i) for i in members])
        stats: dict[str, Any] = {"offset": _off_centre(maps).tolist()}
        if masks is not None:
            inside = torch.stack([_mask(masks(i), tuple(maps.shape[1:]), i) for i in members])
            stats["inside"] = _mass_inside(maps, inside).tolist()
        small = _resized(maps, self.size)
        classes = torch.unique(targets)
        tiny = _resized(maps, self.summary_size)
        sums = torch.stack([tiny[targets == c].sum(0) for c in classes])
        buffer = io.BytesIO()
        np.savez(buffer, classes=classes.numpy(), sums=sums.numpy())
        _write(folder / "cache" / f"classes-{sheet:04d}.npz", buffer.getvalue())
        colored = _colored(small, self.cmap)
        self._save(folder, "map", sheet, colored)
        if self.other is not None:
            theirs = _resized(torch.stack([self.other.map(i) for i in members]), self.size)
            stats["agreement"] = _correlation(small, theirs).tolist()
            self._save(folder, "other", sheet, _colored(theirs, self.cmap))
        if images is not None:
            pictures = torch.stack([_image(images(i), self.size, i) for i in members])
            self._save(folder, "image", sheet, (pictures * 255).round().to(torch.uint8))
            blended = pictures * (1 - OPACITY) + colored.float() / 255 * OPACITY
            self._save(folder, "overlay", sheet, (blended * 255).round().to(torch.uint8))
        return stats

    def _save(self, folder: Path, kind: str, sheet: int, cells: Tensor) -> None:
        """Pack ``(n, H, W, 3)`` uint8 thumbnails into a sheet, each centred in its cell."""
        from PIL import Image

        thumb = self.thumb
        canvas = np.zeros((CELLS * thumb, CELLS * thumb, 3), dtype=np.uint8)
        top, left = (thumb - self.size[0]) // 2, (thumb - self.size[1]) // 2
        for n, cell in enumerate(cells.numpy()):
            row, col = divmod(n, CELLS)
            y, x = row * thumb + top, col * thumb + left
            canvas[y : y + self.size[0], x : x + self.size[1]] = cell
        rows = -(-len(cells) // CELLS)
        image = Image.fromarray(canvas[: rows * thumb])

        def save(handle: Any) -> None:
            image.save(handle, format="JPEG", quality=88)

        write_atomically(folder / "sheets" / f"{kind}-{sheet:04d}.jpg", folder, save)

    def write_summary(self, folder: Path, summary: dict[str, Any], sheets: int) -> None:
        """Each class's mean map, as a small PNG per class."""
        from PIL import Image

        total: dict[int, Tensor] = {}
        for sheet in range(sheets):
            with np.load(folder / "cache" / f"classes-{sheet:04d}.npz") as cached:
                for target, values in zip(cached["classes"], cached["sums"], strict=True):
                    total[int(target)] = total.get(int(target), 0) + torch.from_numpy(values)
        (folder / "classes").mkdir(exist_ok=True)
        for row in summary["classes"]:
            mean = total[row["class"]] / row["count"]
            peak = float(mean.max())
            scaled = mean / peak if peak > 0 else mean
            rgb = _colored(scaled[None], self.cmap)[0].numpy()

            def save(handle: Any, rgb: np.ndarray = rgb) -> None:
                Image.fromarray(rgb).save(handle, format="PNG")

            write_atomically(folder / "classes" / f"class-{row['class']}.png", folder, save)


def _fit(shape: tuple[int, ...], longest: int) -> tuple[int, int]:
    scale = longest / max(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _config_key(store: MapStore) -> Any:
    return {"config": store.config, "complete": store.complete}


def _resized(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False,
                         antialias=True)[:, 0].clamp(0, 1)  # fmt: skip


def _colored(maps: Tensor, cmap: str) -> Tensor:
    """``(n, H, W)`` maps in [0, 1] as ``(n, H, W, 3)`` uint8 colours of ``cmap``."""
    import matplotlib as mpl

    table = torch.from_numpy(mpl.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]).float()
    levels = (maps * 255).round().long().clamp(0, 255)
    return (table[levels] * 255).round().to(torch.uint8)


def _image(value: Any, size: tuple[int, int], index: int) -> Tensor:
    """An image as ``(H, W, 3)`` float in [0, 1], fitted to ``size``: a tensor ``(C, H, W)``,
    an array (or a PIL image) ``(H, W, C)`` (or ``(C, H, W)``), either ``(H, W)``; floats in
    [0, 1] or ``uint8``."""
    array = value.detach().cpu() if isinstance(value, Tensor) else np.asarray(value)
    pixels = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if (isinstance(array, Tensor) and array.dtype == torch.uint8) or (
        isinstance(array, np.ndarray) and array.dtype == np.uint8
    ):
        pixels = pixels / 255
    elif problem := map_ops.unit_range_problem(pixels):  # as camkit.plot takes images
        raise CamkitValueError(
            f"images: images({index}): {problem}, or uint8 (undo a standardization in "
            f"images, and clamp an image that noise pushed out)"
        )
    channels_last = (
        pixels.dim() == 3 and pixels.shape[2] in (1, 3) and pixels.shape[0] not in (1, 3)
    )
    if not isinstance(value, Tensor) and channels_last:  # an (H, W, C) array, as PIL gives
        pixels = pixels.permute(2, 0, 1)
    if pixels.dim() == 2:
        pixels = pixels[None]
    if pixels.dim() != 3 or pixels.shape[0] not in (1, 3):
        raise CamkitValueError(
            f"images: images({index}) has shape {tuple(np.shape(array))}; expected a (C, H, W) "
            f"tensor, an (H, W, C) array, or (H, W), with C 1 or 3"
        )
    fitted = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False,
                           antialias=True)[0].clamp(0, 1)  # fmt: skip
    return fitted.expand(3, *size).permute(1, 2, 0)


def _mask(value: Any, shape: tuple[int, ...], index: int) -> Tensor:
    """A mask as ``(H, W)`` bool at the map's shape (nearest neighbour)."""
    mask = torch.as_tensor(np.asarray(value)).squeeze()
    if mask.dim() != 2:
        raise CamkitValueError(
            f"masks: masks({index}) has shape {tuple(mask.shape)}; expected (H, W)"
        )
    if tuple(mask.shape) != shape:
        mask = F.interpolate(mask[None, None].float(), size=shape, mode="nearest")[0, 0]
    return mask != 0


def _mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """The fraction of each map's mass inside its mask (0 for an all-zero map)."""
    weights = maps.double().clamp_min(0).flatten(1)
    total = weights.sum(1)
    inside = (weights * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total)).float()


def _off_centre(maps: Tensor) -> Tensor:
    """How far each map's centre of mass lies from the image's centre: 0 at the centre, 1 at
    a corner (the distance over half the diagonal); 0 for an all-zero map."""
    _, height, width = maps.shape
    weights = maps.double().clamp_min(0)
    mass = weights.sum(dim=(1, 2))
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height - 0.5
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width - 0.5
    y = (weights.sum(2) * ys).sum(1) / mass.clamp_min(1e-300)
    x = (weights.sum(1) * xs).sum(1) / mass.clamp_min(1e-300)
    distance = torch.sqrt(y**2 + x**2) / (0.5 * 2**0.5)
    return torch.where(mass > 0, distance, torch.zeros_like(distance)).float()


def _correlation(first: Tensor, second: Tensor) -> Tensor:
    """The Pearson correlation of each pair of maps (0 where either is constant)."""
    a = first.flatten(1).double()
    b = second.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / norms.clamp_min(1e-300)
    return torch.where(norms > 0, r, torch.zeros_like(r)).float()


def _page_data(
    main: MapStore,
    other: MapStore | None,
    records: dict[str, Tensor],
    stats: list[dict[str, Any]],
    classes: Sequence[str] | None,
    title: str | None,
    layout: _Layout,
) -> dict[str, Any]:
    """Everything the page shows, as columns (one value per stored sample, in order)."""
    indices = records["index"].tolist()
    target, prediction = records["target"].tolist(), records["prediction"].tolist()
    offset = [round(v, 4) for sheet in stats for v in sheet["offset"]]
    columns: dict[str, Any] = {
        "index": indices,
        "target": target,
        "prediction": prediction,
        "score": [float(f"{v:.5g}") for v in records["score"].tolist()],
        "offset": offset,
        "source": main.sources and [main.sources[i] for i in indices],
        "agreement": None,
    }
    if other is not None:
        columns["agreement"] = [round(v, 4) for sheet in stats for v in sheet["agreement"]]
    columns["inside"] = None
    if layout.with_masks:
        columns["inside"] = [round(v, 4) for sheet in stats for v in sheet["inside"]]
    summary = []
    for cls in sorted(set(target)):
        rows = [i for i, t in enumerate(target) if t == cls]
        summary.append(
            {
                "class": cls,
                "count": len(rows),
                "accuracy": sum(prediction[i] == cls for i in rows) / len(rows),
                "score": sum(columns["score"][i] for i in rows) / len(rows),
                "offset": sum(offset[i] for i in rows) / len(rows),
                "inside": None
                if columns["inside"] is None
                else sum(columns["inside"][i] for i in rows) / len(rows),
            }
        )
    return {
        "title": title or str(main.path),
        "store": _describe(main),
        "other": None if other is None else _describe(other),
        "classes": None if classes is None else list(classes),
        "columns": columns,
        "summary": {"classes": summary},
        "sheets": {
            "cells": CELLS,
            "thumb": layout.thumb,
            "size": list(layout.size),
            "kinds": layout.kinds(),
        },
    }


def _describe(store: MapStore) -> dict[str, Any]:
    explainer = store.config.get("explainer", {})
    return {
        "path": str(store.path),
        "method": explainer.get("method"),
        "layers": explainer.get("layers"),
        "complete": store.complete,
    }
