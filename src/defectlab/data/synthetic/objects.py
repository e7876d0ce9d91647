"""Renderers of the object categories, cable and capsule, without defects.

Each object is a scene (a plain dict of pose, colours and parts, drawn from
the image's base random stream) and a function that renders a scene to albedo,
so a defect edits a copy of the scene and both versions render through the
same code. Also here: the geometry constants of the cable's wires and of the
capsule and its "500" imprint, which the defects of
:mod:`defectlab.data.synthetic.defects` place themselves by.
"""

from __future__ import annotations

import math

import numpy as np

from defectlab.data.synthetic.primitives import (
    _edge_alpha,
    _filtered_noise,
    _frame_window,
    _low_frequency_noise,
    _paint,
    _pixel_grid,
    _polyline_distance,
    _polyline_distance_many,
    _rotate_into_frame,
    _segment_distance,
    _within,
)


# ---------------------------------------------------------------------------
# Cable: a round cross-section with three coloured wires, as in MVTec AD.
# The scene is a plain dict so that a defect edits a copy and both versions
# render through the same code.
# ---------------------------------------------------------------------------

_CABLE_WIRE_COLOURS = np.array([[0.20, 0.55, 0.28], [0.18, 0.32, 0.68], [0.52, 0.48, 0.42]], np.float32)
_CABLE_OUTER_RADIUS = 0.46
_CABLE_INNER_RADIUS = 0.41
_CABLE_WIRE_OFFSET = 0.2
_CABLE_INSULATION_RADIUS = 0.17
_CABLE_CORE_RADIUS = 0.1


def _cable_scene(rng: np.random.Generator, size: int) -> dict:
    # Pose jitter stays below a pixel at 256 px, as on MVTec AD's fixture: at 64
    # px a pixel of shift outweighs most defects for pixel-space baselines.
    # Per-wire shades vary instead, as real insulation and copper do.
    wire_colours = _CABLE_WIRE_COLOURS * rng.normal(1.0, 0.02, (3, 1)).astype(np.float32)
    return {
        "centre": 0.5 + rng.normal(0, 0.0025, 2),
        "angle": float(rng.normal(0, np.radians(0.75))),
        "scale": float(rng.normal(1.0, 0.003)),
        "wire_colours": [tuple(colour) for colour in np.clip(wire_colours, 0, 1)],
        "wire_present": [True, True, True],
        "core_present": [True, True, True],
        "strand_angles": rng.normal(0.2, 0.05, 3),
        "copper_shades": rng.normal(1.0, 0.02, 3).tolist(),
        "bent_strands": [],  # (wire, direction, length, width)
        "overlays": [],  # (kind, centre, radius or points, width)
        "filler_texture": _filtered_noise(rng, size, 1.5 * size / 256.0),
        "background": float(rng.uniform(0.0625, 0.0875)),
    }


def _cable_albedo(scene: dict, size: int) -> np.ndarray:
    x, y = _pixel_grid(size)
    u, v = _rotate_into_frame(x, y, scene["centre"], scene["angle"], scene["scale"])
    scale = scene["scale"]

    def alpha(distance):  # distances in the object frame
        return _edge_alpha(distance * scale, size)

    radius = np.hypot(u, v)
    albedo = np.full((size, size, 3), scene["background"], np.float32)
    # Jacket and filler
    jacket_shading = 1.0 - 0.25 * (radius / _CABLE_OUTER_RADIUS) ** 6
    jacket = np.array([0.82, 0.81, 0.78], np.float32) * jacket_shading[..., None]
    _paint(albedo, alpha(radius - _CABLE_OUTER_RADIUS), jacket)
    filler = 0.5 + 0.02 * scene["filler_texture"]
    _paint(albedo, alpha(radius - _CABLE_INNER_RADIUS), np.stack([filler, filler * 0.97, filler * 0.92], axis=-1))
    # Wires, each an insulation ring around a core of copper strands
    for wire in range(3):
        wire_angle = np.pi / 2 + wire * 2 * np.pi / 3
        wire_u = _CABLE_WIRE_OFFSET * math.cos(wire_angle)
        wire_v = _CABLE_WIRE_OFFSET * math.sin(wire_angle)
        bent_reaches = [length + width for bent, _, length, width in scene["bent_strands"] if bent == wire]
        reach = max([_CABLE_INSULATION_RADIUS] + bent_reaches)
        window = _frame_window(scene, (wire_u - reach, wire_u + reach), (wire_v - reach, wire_v + reach), size)
        wire_albedo = albedo[window]
        local_u, local_v = u[window] - wire_u, v[window] - wire_v
        wire_radius = np.hypot(local_u, local_v)
        if not scene["wire_present"][wire]:
            # The wire's channel in the filler stays, empty and dark.
            _paint(wire_albedo, alpha(wire_radius - _CABLE_INSULATION_RADIUS * 0.95) * 0.8, (0.12, 0.11, 0.1))
            continue
        insulation_shading = 1.05 - 0.3 * (wire_radius / _CABLE_INSULATION_RADIUS) ** 4
        colour = np.asarray(scene["wire_colours"][wire], np.float32)
        _paint(wire_albedo, alpha(wire_radius - _CABLE_INSULATION_RADIUS), colour * insulation_shading[..., None])
        if not scene["core_present"][wire]:
            _paint(wire_albedo, alpha(wire_radius - _CABLE_CORE_RADIUS), (0.07, 0.06, 0.05))
            continue
        core_distance = wire_radius - _CABLE_CORE_RADIUS
        for bent_wire, direction, length, width in scene["bent_strands"]:
            if bent_wire == wire:
                tip = (length * math.cos(direction), length * math.sin(direction))
                core_distance = np.minimum(core_distance, _segment_distance(local_u, local_v, (0.0, 0.0), tip) - width)
        # Strands: a hexagonal lattice of bright discs (three crossed cosines).
        strand_angle = scene["strand_angles"][wire]
        wavenumber = 2 * np.pi / (_CABLE_CORE_RADIUS / 2.2)
        lattice = sum(
            np.cos(wavenumber * (local_u * math.cos(direction) + local_v * math.sin(direction)))
            for direction in (strand_angle, strand_angle + np.pi / 3, strand_angle + 2 * np.pi / 3)
        )
        strands = 0.75 + 0.25 * np.clip((lattice + 1.5) / 4.5, 0, 1)
        copper = np.array([0.86, 0.55, 0.3], np.float32) * scene["copper_shades"][wire] * strands[..., None]
        _paint(wire_albedo, alpha(core_distance), copper)
    for kind, centre, extent, width in scene["overlays"]:
        if kind == "cut":  # a notch: the insulation is sliced open onto a dark gap
            us, vs = [point[0] for point in extent], [point[1] for point in extent]
            window = _frame_window(scene, (min(us) - width, max(us) + width), (min(vs) - width, max(vs) + width), size)
            distance = _polyline_distance(u[window], v[window], extent)
            _paint(albedo[window], alpha(distance - width), (0.1, 0.09, 0.08))
        elif kind == "poke":  # a dent: shadowed pit with a lit rim
            reach = 1.6 * extent
            window = _frame_window(
                scene, (centre[0] - reach, centre[0] + reach), (centre[1] - reach, centre[1] + reach), size
            )
            distance = np.hypot(u[window] - centre[0], v[window] - centre[1])
            poked = albedo[window]
            _paint(poked, alpha(distance - reach) * 0.5, poked * 1.4)
            _paint(poked, alpha(distance - extent), poked * 0.3)
    return albedo


# ---------------------------------------------------------------------------
# Capsule: a two-coloured pill lying on a light surface, printed "500".
# ---------------------------------------------------------------------------

_CAPSULE_HALF_STRAIGHT = 0.25  # half the length of the straight part
_CAPSULE_RADIUS = 0.13

# Seven-segment strokes per glyph, in a unit cell (x right, y down).
_SEGMENT_STROKES = {
    "a": ((0.0, 0.0), (1.0, 0.0)),
    "b": ((1.0, 0.0), (1.0, 0.5)),
    "c": ((1.0, 0.5), (1.0, 1.0)),
    "d": ((0.0, 1.0), (1.0, 1.0)),
    "e": ((0.0, 0.5), (0.0, 1.0)),
    "f": ((0.0, 0.0), (0.0, 0.5)),
    "g": ((0.0, 0.5), (1.0, 0.5)),
}
_DIGIT_SEGMENTS = {"5": "afgcd", "0": "abcdef"}
_CAPSULE_PRINT = "500"


def _capsule_print_strokes() -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The imprint as segments in the capsule frame, on the right half."""
    glyph_width, glyph_height, gap = 0.045, 0.085, 0.025
    left = 0.07
    strokes = []
    for position, digit in enumerate(_CAPSULE_PRINT):
        origin_u = left + position * (glyph_width + gap)
        for segment in _DIGIT_SEGMENTS[digit]:
            (start_x, start_y), (end_x, end_y) = _SEGMENT_STROKES[segment]
            strokes.append(
                (
                    (origin_u + start_x * glyph_width, -glyph_height / 2 + start_y * glyph_height),
                    (origin_u + end_x * glyph_width, -glyph_height / 2 + end_y * glyph_height),
                )
            )
    return strokes


def _capsule_scene(rng: np.random.Generator, size: int) -> dict:
    # Pose jitter stays below a pixel at 256 px, as on MVTec AD's fixture (see
    # _cable_scene); the pieces themselves vary a little in colour, width and print.
    return {
        "centre": 0.5 + rng.normal(0, 0.0015, 2),
        "angle": float(rng.normal(0, np.radians(0.3))),
        "scale": float(rng.normal(1.0, 0.002)),
        "seam": float(rng.normal(-0.02, 0.001)),
        "left_colour": tuple(np.array([0.16, 0.15, 0.15], np.float32) * rng.uniform(0.98, 1.02)),
        "right_colour": tuple(np.array([0.88, 0.52, 0.18], np.float32) * rng.uniform(0.985, 1.015)),
        "print_colour": (0.93, 0.92, 0.88),
        "print_strokes": _capsule_print_strokes(),
        "radius": float(rng.normal(_CAPSULE_RADIUS, 0.001)),
        "print_width": float(rng.uniform(0.0085, 0.0095)),
        "print_strength": float(rng.uniform(0.8875, 0.9625)),
        "print_offset": tuple(rng.normal(0, 0.00075, 2)),
        "squeeze": None,  # (position along, depth, width, side)
        "overlays": [],  # (kind, points or centre, width or radius, colour factor)
        "background_texture": _low_frequency_noise(rng, size, 4) * 0.0025,
        "background": float(rng.uniform(0.705, 0.715)),
    }


def _capsule_albedo(scene: dict, size: int) -> np.ndarray:
    background = scene["background"] + scene["background_texture"]
    albedo = np.repeat(background[..., None], 3, axis=-1).astype(np.float32)
    # Everything below happens inside the capsule's window, shadow included
    # (the shadow fades out 0.015 beyond its outline).
    half_length = _CAPSULE_HALF_STRAIGHT + scene["radius"] + 0.03
    window = _frame_window(scene, (-half_length, half_length), (-scene["radius"] - 0.03, scene["radius"] + 0.05), size)
    x, y = _pixel_grid(size)
    u, v = _rotate_into_frame(x[:, window[1]], y[window[0]], scene["centre"], scene["angle"], scene["scale"])
    scale = scene["scale"]

    def alpha(distance):
        return _edge_alpha(distance * scale, size)

    # Body: a stadium whose radius can be pinched on one side (squeeze).
    radius = np.full(u.shape, scene["radius"], np.float32)
    if scene["squeeze"] is not None:
        position, depth, width, side = scene["squeeze"]
        pinch = depth * np.exp(-(((u - position) / width) ** 2))
        radius = np.where(np.sign(v) == side, radius - pinch, radius)
    along_axis = np.abs(u) - _CAPSULE_HALF_STRAIGHT
    radial = np.where(along_axis <= 0, np.abs(v) / radius, np.hypot(along_axis, v) / scene["radius"])
    body_distance = np.where(along_axis <= 0, np.abs(v) - radius, np.hypot(along_axis, v) - scene["radius"])
    body_alpha = alpha(body_distance)

    capsule_albedo = albedo[window]
    # A soft shadow below-right of the capsule.
    shadow_v = v - 0.02
    shadow_distance = np.where(along_axis <= 0, np.abs(shadow_v) - radius, np.hypot(along_axis, shadow_v) - scene["radius"])
    capsule_albedo *= (1.0 - 0.3 * np.clip(0.5 - shadow_distance / 0.03, 0, 1))[..., None]

    left_alpha = alpha(u - scene["seam"])
    surface = np.empty_like(capsule_albedo)
    surface[:] = scene["right_colour"]
    _paint(surface, left_alpha, scene["left_colour"])
    seam_line = alpha(np.abs(u - scene["seam"]) - 0.003) * 0.5
    surface *= (1.0 - seam_line)[..., None]
    # Imprint, drawn only around its strokes
    offset_u, offset_v = scene["print_offset"]
    reach = scene["print_width"]
    stroke_us = [point[0] + offset_u for stroke in scene["print_strokes"] for point in stroke]
    stroke_vs = [point[1] + offset_v for stroke in scene["print_strokes"] for point in stroke]
    if stroke_us:
        print_box = _frame_window(
            scene, (min(stroke_us) - reach, max(stroke_us) + reach), (min(stroke_vs) - reach, max(stroke_vs) + reach), size
        )
        print_window = _within(window, print_box)
        print_distance = _polyline_distance_many(
            u[print_window] - offset_u, v[print_window] - offset_v, scene["print_strokes"]
        )
        _paint(surface[print_window], alpha(print_distance - reach) * scene["print_strength"], scene["print_colour"])
    for kind, shape, extent, factor in scene["overlays"]:
        if kind == "line":  # cracks and scratches
            _paint(surface, alpha(_polyline_distance(u, v, shape) - extent), surface * factor)
        elif kind == "dent":
            distance = np.hypot(u - shape[0], v - shape[1])
            _paint(surface, alpha(distance - 1.5 * extent) * 0.6, np.minimum(surface * 1.6 + 0.1, 1.0))
            _paint(surface, alpha(distance - extent), surface * factor)
        elif kind == "smudge":  # ink smeared or rubbed off around the imprint
            distance = np.hypot((u - shape[0]) / extent[0], (v - shape[1]) / extent[1])
            smeared = np.clip(1.0 - distance, 0, 1) ** 0.5
            _paint(surface, smeared * factor, scene["right_colour"])
    # Cylinder shading: darker towards the rims, a highlight band above the axis.
    across = np.clip(np.where(along_axis <= 0, v / radius, v / scene["radius"]), -1, 1)
    depth = np.sqrt(np.clip(1.0 - np.clip(radial, 0, 1) ** 2, 0, 1))
    shading = 0.55 + 0.45 * depth + 0.3 * np.exp(-(((across + 0.45) / 0.15) ** 2)) * depth
    _paint(capsule_albedo, body_alpha, surface * shading[..., None])
    return albedo
