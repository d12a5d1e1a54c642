"""Blend-back: paste generated 256x256 faces into the original frames as REF does (musetalk.md 5).

For each output row ``t`` (source frame ``faces.index[t]``, box ``(x1, y1, x2, y2)``):

1. Expanded square crop around the box (5.1): ``s = int((max(w, h) // 2) * expand)``,
   side ``L = 2s``, centred on ``((x1 + x2) // 2, (y1 + y2) // 2)``; out-of-frame parts are black.
2. Parse mask (5.2): the ORIGINAL frame's crop, 8-bit, resized to 512 with PIL's BILINEAR weights
   (antialiased on downscale), BiSeNet labels, the mode's keep rule (raw, neck, jaw with REF's exact
   kernels), resized back to ``L`` with PIL's BICUBIC weights. Without a parser (mode ``ellipse``):
   a filled ellipse inscribed in the box.
3. Assembly (5.3): keep the mask inside the box only, zero rows above ``top = int(L * 0.5)``,
   Gaussian blur with ``k = int(f * L // 2 * 2) + 1`` and OpenCV's sigma rule, reflect-101 border.
4. Composite: the generated crop resized to the box with OpenCV INTER_LINEAR weights (rounded to
   8 bits like REF's uint8 face) is alpha-blended over the original with ``alpha = mask / 255``.
   Outside the box REF's composite re-writes the original's own pixels, so only the box region
   changes; we write only where ``alpha > 0``, so every other pixel keeps the input bit for bit
   (out-of-range values included). REF rounds the blend to 8 bits (PIL paste); ours is float
   (pitfall 21: +-1 LSB).

Every resize, blur and morphology step is one batched tensor op over all faces of a batch
(``masks.py``), on the runtime's device. The alpha of a row depends only on the source frame's
crop, the box and the settings, so it is memoised in ``faces.cache`` (shared with the source
faces value): a new audio clip re-parses nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import masks as mk
from .errors import InputError
from .runtime import Runtime
from .types import MuseTalkFaces, version_settings

log = logging.getLogger(__name__)

UPPER_BOUNDARY_RATIO = 0.5
CACHE_KEY = "blend_alpha"


@dataclass(frozen=True)
class BlendSettings:
    """What the alpha of a face depends on (besides the source pixels and the box).

    Attributes:
        mode: ``jaw``, ``raw``, ``neck`` (BiSeNet) or ``ellipse`` (no parser).
        left_cheek, right_cheek: jaw-mode cheek widths in 512-space pixels (0..256).
        feather: Gaussian blur factor ``f`` (REF normal inference 0.05, realtime 0.1).
        expand: side factor of the square crop (REF 1.5).
    """

    mode: str
    left_cheek: int = 90
    right_cheek: int = 90
    feather: float = 0.05
    expand: float = 1.5

    def key(self, parser_id: str | None) -> tuple:
        cheeks = (self.left_cheek, self.right_cheek) if self.mode == "jaw" else None
        return (CACHE_KEY, parser_id if self.mode != "ellipse" else None, self.mode, cheeks,
                float(self.feather), float(self.expand))


def resolve_mode(mode: str, version: str, has_parser: bool) -> str:
    """``auto`` -> the version's REF default (jaw for v1.5, raw for v1); parse modes without a
    parser fall back to ``ellipse`` (with a warning)."""
    if mode == "auto":
        mode = version_settings(version).parsing_mode
        if not has_parser:
            return "ellipse"
    if mode not in mk.MODES:
        raise InputError(f"unknown blend mode {mode!r}", input_name="mode",
                         fix=f"pick one of auto, {', '.join(mk.MODES)}")
    if mode in mk.PARSE_MODES and not has_parser:
        log.warning("blend mode %r needs a face parser; none connected, using the feathered "
                    "ellipse. Fix: connect MuseTalk Face Parser Loader", mode)
        return "ellipse"
    return mode


def expanded_square(box: tuple[int, int, int, int], expand: float) -> tuple[int, int, int]:
    """REF's ``get_crop_box``: ``(xs, ys, L)``, the top-left corner and side of the square crop."""
    x1, y1, x2, y2 = box
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return xc - s, yc - s, 2 * s


def validate(frames: torch.Tensor, faces: MuseTalkFaces) -> None:
    """Check that ``frames`` are the source frames of ``faces`` (shapes, counts, finite pixels).

    Raises:
        InputError: naming ``frames`` or ``faces`` and the fix.
    """
    if not isinstance(faces, MuseTalkFaces):
        raise InputError(f"expected MUSETALK_FACES, got {type(faces).__name__}",
                         input_name="faces", fix="connect the faces output of MuseTalk Inpaint")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be an IMAGE [N, H, W, 3], got shape {tuple(frames.shape)}",
                         input_name="frames", fix="connect the original video frames")
    n = len(faces)
    for name, t, shape in (("crops", faces.crops, (n, 256, 256, 3)), ("has_face", faces.has_face,
                                                                       (n,))):
        if tuple(t.shape) != shape:
            raise InputError(f"faces.{name} has shape {tuple(t.shape)}, expected {shape}",
                             input_name="faces", fix="connect the faces output of MuseTalk Inpaint")
    if not faces.generated:
        raise InputError("faces hold the source crops, not generated ones",
                         input_name="faces", fix="connect the faces output of MuseTalk Inpaint")
    h, w = int(frames.shape[1]), int(frames.shape[2])
    sh, sw = faces.source_size
    if (h, w) != (sh, sw):
        raise InputError(f"frames are {w}x{h} but the faces were cropped from {sw}x{sh} frames",
                         input_name="frames",
                         fix="connect the same frames to Face Crop and Blend")
    idx = faces.index
    if n and (int(idx.max()) >= frames.shape[0] or int(idx.min()) < 0):
        raise InputError(f"faces refer to source frame {int(idx.max())} but only "
                         f"{frames.shape[0]} frames are connected", input_name="frames",
                         fix="connect the same frames to Face Crop and Blend")
    bad, seen = [], set()
    boxes, index = faces.boxes.tolist(), idx.tolist()
    for t in torch.nonzero(faces.has_face).flatten().tolist():
        x1, y1, x2, y2 = (int(v) for v in boxes[t])
        if x2 <= x1 or y2 <= y1:
            raise InputError(f"face box of row {t} is empty ({x1}, {y1}, {x2}, {y2})",
                             input_name="faces", fix="re-run MuseTalk Face Crop on these frames")
        if (index[t], x1, y1, x2, y2) in seen:
            continue
        seen.add((index[t], x1, y1, x2, y2))
        region = frames[index[t], max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]
        # one fast reduction first (NaN propagates), the exact test only then
        if torch.isnan(region.sum()) and torch.isnan(region).any():
            bad.append(index[t])
    if bad:
        shown = sorted(set(bad))
        more = f" (+{len(shown) - 10} more)" if len(shown) > 10 else ""
        raise InputError(f"NaN pixels inside the face box of frames "
                         f"{', '.join(map(str, shown[:10]))}{more}", input_name="frames",
                         fix="fix the upstream node producing NaN, or replace those frames")


def _fingerprint(frames: torch.Tensor, src: int, xs: int, ys: int, side: int) -> tuple:
    """Cheap content key of the crop region a mask depends on."""
    h, w = frames.shape[1:3]
    region = frames[src, max(ys, 0):min(ys + side, h), max(xs, 0):min(xs + side, w)]
    if region.numel() == 0:
        return (0.0, 0.0)
    per_row = region.sum(dim=(1, 2), dtype=torch.float64)
    ramp = torch.arange(1, per_row.shape[0] + 1, dtype=torch.float64, device=region.device)
    return (float(per_row.sum()), float((per_row * ramp).sum()))


def _gather_square(frames: torch.Tensor, src: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                   sides: torch.Tensor, size: int) -> torch.Tensor:
    """Black-filled square crops ``[B, size, size, 3]`` (valid part: ``sides[b]``) of ``frames``."""
    h, w = frames.shape[1:3]
    dev = frames.device
    ar = torch.arange(size, device=dev)
    rr = ys.to(dev)[:, None] + ar
    cc = xs.to(dev)[:, None] + ar
    inside = ar[None, :] < sides.to(dev)[:, None]
    vr = (rr >= 0) & (rr < h) & inside
    vc = (cc >= 0) & (cc < w) & inside
    crop = frames[src.to(dev)[:, None, None], rr.clamp(0, h - 1)[:, :, None],
                  cc.clamp(0, w - 1)[:, None, :]]
    return crop * (vr[:, :, None] & vc[:, None, :]).unsqueeze(-1)


def compute_alphas(frames: torch.Tensor, rows: list[tuple[int, tuple[int, int, int, int]]],
                   settings: BlendSettings, parser, runtime: Runtime) -> list[torch.Tensor]:
    """Blend alpha (0..255) over each face box, batched.

    Only the part of each L x L mask that can be non-zero is computed: the back-resize and the
    blur are restricted to the rows and columns of the box (sub-matrices of the full-size
    operators, reflect-101 folding included), which gives the same numbers as REF's full-crop
    pipeline at a fraction of the cost.

    Args:
        frames: ``[N, H, W, 3]`` float frames (0..1).
        rows: ``(source frame, box)`` per face.
        settings: mode, cheek widths, feather, expand.
        parser: an object with ``parse([B,3,512,512] 0..1) -> labels [B,512,512]`` (modes other
            than ``ellipse``).
        runtime: device for the work.

    Returns:
        per row a float32 ``[h_box, w_box]`` tensor of integral values 0..255 on ``runtime.device``.
    """
    dev = runtime.device
    geo = [expanded_square(box, settings.expand) for _, box in rows]
    sides = [g[2] for g in geo]
    # crop coordinates: box rows/cols, and the first row kept by the upper-boundary cut
    spans = []
    for (_, (x1, y1, x2, y2)), (xs, ys, side) in zip(rows, geo, strict=True):
        top = min(max(y1 - ys, int(side * UPPER_BOUNDARY_RATIO)), y2 - ys)
        spans.append((y1 - ys, y2 - ys, x1 - xs, x2 - xs, top))
    hb = max(s[1] - s[0] for s in spans)
    wb = max(s[3] - s[2] for s in spans)
    hr = max(max(s[1] - s[4] for s in spans), 1)
    if settings.mode == "ellipse":
        m = _ellipse_masks(rows, geo, spans, hr, wb, dev)
    else:
        size = max(sides)
        src = torch.tensor([r[0] for r in rows])
        crop = _gather_square(frames, src, torch.tensor([g[0] for g in geo]),
                              torch.tensor([g[1] for g in geo]), torch.tensor(sides), size)
        crop = crop.to(dev, torch.float32).clamp_(0, 1).mul_(255)
        crop = crop.add_(0.5).floor_().permute(0, 3, 1, 2)  # REF parses the 8-bit frame
        to512 = mk.stack_padded([mk.pil_matrix(s, mk.PARSE_SIZE, "bilinear") for s in sides],
                                mk.PARSE_SIZE, size, dev)
        img = mk.resample(crop, to512, to512, quantize=True).div_(255)
        del crop
        labels = parser.parse(img).to(dev)
        m512 = mk.labels_to_mask(labels, settings.mode, settings.left_cheek,
                                 settings.right_cheek)
        backs = [mk.pil_matrix(mk.PARSE_SIZE, s, "bicubic") for s in sides]
        by = mk.stack_padded([b[sp[4]:sp[1]] for b, sp in zip(backs, spans, strict=True)], hr,
                             mk.PARSE_SIZE, dev)
        bx = mk.stack_padded([b[sp[2]:sp[3]] for b, sp in zip(backs, spans, strict=True)], wb,
                             mk.PARSE_SIZE, dev)
        m = mk.resample(m512.unsqueeze(1), by, bx, quantize=True)[:, 0]
    blurs = [mk.gaussian_matrix(s, mk.blur_kernel_size(settings.feather, s)) for s in sides]
    gy = mk.stack_padded([g[sp[0]:sp[1], sp[4]:sp[1]] for g, sp in zip(blurs, spans,
                                                                         strict=True)],
                         hb, hr, dev)
    gx = mk.stack_padded([g[sp[2]:sp[3], sp[2]:sp[3]] for g, sp in zip(blurs, spans,
                                                                         strict=True)],
                         wb, wb, dev)
    m = mk.resample(m.unsqueeze(1), gy, gx, quantize=True, round_between=False)[:, 0]
    return [m[i, :sp[1] - sp[0], :sp[3] - sp[2]] for i, sp in enumerate(spans)]


def _ellipse_masks(rows, geo, spans, hr: int, wb: int, dev: torch.device) -> torch.Tensor:
    """Filled ellipses inscribed in each box (0/255) over the kept rows of the box
    ``[B, hr, wb]`` (rows from the upper-boundary cut down, the box's columns)."""
    out = torch.zeros((len(rows), hr, wb), device=dev)
    for i, ((_, (x1, y1, x2, y2)), (xs, ys, _), sp) in enumerate(zip(rows, geo, spans,
                                                                      strict=True)):
        yy = torch.arange(sp[4], sp[1], device=dev, dtype=torch.float32) + 0.5 + ys
        xx = torch.arange(sp[2], sp[3], device=dev, dtype=torch.float32) + 0.5 + xs
        ax, ay = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
        d = ((xx[None, :] - (x1 + x2) / 2) / ax) ** 2 + ((yy[:, None] - (y1 + y2) / 2) / ay) ** 2
        out[i, :yy.shape[0], :xx.shape[0]] = (d <= 1).float() * 255
    return out


def resize_faces(crops: torch.Tensor, sizes: list[tuple[int, int]], dev: torch.device
                 ) -> torch.Tensor:
    """Generated crops uint8 ``[B,256,256,3]`` -> box size ``(w, h)`` with OpenCV INTER_LINEAR
    weights, rounded to 8 bits; float32 ``[B, 3, hmax, wmax]`` in 0..1 (zero-padded)."""
    hmax = max(s[1] for s in sizes)
    wmax = max(s[0] for s in sizes)
    x = crops.to(dev).permute(0, 3, 1, 2).float()
    ry = mk.stack_padded([mk.cv2_linear_matrix(crops.shape[1], h) for _, h in sizes], hmax,
                        crops.shape[1], dev)
    rx = mk.stack_padded([mk.cv2_linear_matrix(crops.shape[2], w) for w, _ in sizes], wmax,
                        crops.shape[2], dev)
    return mk.resample(x, ry, rx, quantize=True).div_(255)


def blend_faces(
    frames: torch.Tensor,
    faces: MuseTalkFaces,
    *,
    runtime: Runtime,
    parser=None,
    mode: str = "auto",
    left_cheek_width: int = 90,
    right_cheek_width: int = 90,
    feather: float = 0.05,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the generated faces into their source frames.

    Args:
        frames: the ORIGINAL frames, IMAGE ``[N_src, H, W, 3]`` (any float dtype, any device).
        faces: generated faces, one row per output frame (``source_index`` maps rows to frames).
        runtime: device, progress and interruption.
        parser: a :class:`~musetalk_core.models.face_parser.FaceParser` (or anything with ``parse``
            and ``parser_id``); ``None`` -> the ellipse fallback.
        mode: ``auto`` (version default), ``jaw``, ``raw``, ``neck`` or ``ellipse``.
        left_cheek_width, right_cheek_width: jaw-mode cheek widths in 512-space pixels.
        feather: Gaussian blur factor (REF normal inference 0.05).
        batch_size: faces per batch.

    Returns:
        ``(images, mask)``: float32 ``[T, H, W, 3]`` and ``[T, H, W]`` (alpha 0..1; exactly 0 where
        the output equals the input) on ``runtime.intermediate_device``.
    """
    validate(frames, faces)
    mode = resolve_mode(mode, faces.version, parser is not None)
    settings = BlendSettings(mode, int(left_cheek_width), int(right_cheek_width),
                             float(feather), version_settings(faces.version).expand)
    memo = faces.cache.setdefault(settings.key(getattr(parser, "parser_id", None)), {})
    t_total, (h, w) = len(faces), faces.source_size
    inter = runtime.intermediate_device
    images = torch.empty((t_total, h, w, 3), dtype=torch.float32, device=inter)
    mask = torch.zeros((t_total, h, w), dtype=torch.float32, device=inter)
    index = faces.index.tolist()
    has_face = faces.has_face.tolist()
    boxes = faces.boxes.tolist()
    if parser is not None and mode != "ellipse" and isinstance(parser, torch.nn.Module):
        runtime.load_models([parser])
    bs = max(1, int(batch_size))
    parsed = 0
    for start in range(0, t_total, bs):
        runtime.check_interrupt()
        stop = min(start + bs, t_total)
        sel = torch.tensor(index[start:stop], dtype=torch.long)
        images[start:stop] = frames[sel.to(frames.device)].to(inter, torch.float32)
        rows = [t for t in range(start, stop) if has_face[t]]
        if rows:
            parsed += _blend_rows(frames, faces, rows, index, boxes, settings, parser, memo,
                                  images, mask, runtime)
        runtime.step(stop, t_total, "blend")
    log.info("blend: %d frames, %d faces parsed, %d from cache (mode %s)", t_total, parsed,
             sum(has_face) - parsed, mode)
    return images, mask


def _blend_rows(frames, faces, rows, index, boxes, settings, parser, memo, images, mask,
                runtime) -> int:
    dev = runtime.device
    keys, todo = [], {}
    for t in rows:
        box = tuple(int(v) for v in boxes[t])
        xs, ys, side = expanded_square(box, settings.expand)
        key = (index[t], box, _fingerprint(frames, index[t], xs, ys, side))
        keys.append(key)
        if key not in memo and key not in todo:
            todo[key] = (index[t], box)
    if todo:
        alphas = compute_alphas(frames, list(todo.values()), settings, parser, runtime)
        for key, a in zip(todo, alphas, strict=True):
            memo[key] = a.to(torch.uint8).to(runtime.intermediate_device)
    sizes = [(k[1][2] - k[1][0], k[1][3] - k[1][1]) for k in keys]
    gen = resize_faces(faces.crops[rows], sizes, dev)  # [B,3,hm,wm]
    hm, wm = gen.shape[2:]
    alpha = torch.zeros((len(rows), hm, wm), device=dev)
    for i, key in enumerate(keys):
        a = memo[key]
        alpha[i, :a.shape[0], :a.shape[1]] = a.to(dev, torch.float32)
    alpha.div_(255)
    # where each box pixel lands in the frame (boxes may reach past the frame edge)
    h, w = images.shape[1:3]
    y0 = torch.tensor([k[1][1] for k in keys])[:, None] + torch.arange(hm)
    x0 = torch.tensor([k[1][0] for k in keys])[:, None] + torch.arange(wm)
    bh = torch.tensor([s[1] for s in sizes])[:, None]
    bw = torch.tensor([s[0] for s in sizes])[:, None]
    vy = (y0 >= 0) & (y0 < h) & (torch.arange(hm) < bh)
    vx = (x0 >= 0) & (x0 < w) & (torch.arange(wm) < bw)
    valid = vy[:, :, None] & vx[:, None, :] & (alpha.cpu() > 0)
    b_i, r_i, c_i = torch.nonzero(valid, as_tuple=True)
    if b_i.numel() == 0:
        return len(todo)
    t_i = torch.tensor(rows)[b_i]
    yy, xx = y0[b_i, r_i], x0[b_i, c_i]
    src = torch.tensor([index[t] for t in rows])[b_i]
    orig = frames[src.to(frames.device), yy.to(frames.device), xx.to(frames.device)]
    orig = orig.to(dev, torch.float32)
    a = alpha[b_i.to(dev), r_i.to(dev), c_i.to(dev)]
    g = gen[b_i.to(dev), :, r_i.to(dev), c_i.to(dev)]
    out = torch.lerp(orig, g, a[:, None])
    inter = images.device
    images[t_i.to(inter), yy.to(inter), xx.to(inter)] = out.to(inter)
    mask[t_i.to(inter), yy.to(inter), xx.to(inter)] = a.to(inter)
    return len(todo)
