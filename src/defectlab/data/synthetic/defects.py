"""Defect renderers, one per category, each covering all of that category's defect types.

``_carpet_defect`` and ``_leather_defect`` paint on a copy of a texture's
albedo; ``_cable_defect`` and ``_capsule_defect`` edit a copy of an object's
scene, which then renders through the same code as the good one. All draw from
the defect's own random stream, so the good content never shifts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from defectlab.data.synthetic.objects import (
    _CABLE_CORE_RADIUS,
    _CABLE_INSULATION_RADIUS,
    _CABLE_OUTER_RADIUS,
    _CABLE_WIRE_OFFSET,
    _CAPSULE_HALF_STRAIGHT,
    _CAPSULE_PRINT,
    _CAPSULE_RADIUS,
    _DIGIT_SEGMENTS,
)
from defectlab.data.synthetic.primitives import (
    _blob_distance,
    _edge_alpha,
    _filtered_noise,
    _jagged_line,
    _mix,
    _paint,
    _pixel_grid,
    _polyline_distance,
    _random_curve,
    _segment_distance,
    _strength,
)


def _carpet_defect(albedo, rng, defect_type, size) -> None:
    x, y = _pixel_grid(size)
    strength = _strength(rng)
    centre = rng.uniform(0.15, 0.85, 2)
    pixel = 1.0 / size
    if defect_type == "color":
        radius = max(_mix(0.04, 0.25, strength), 3 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 2), rng.uniform(0, np.pi), 0.25)
        alpha = np.clip((1.0 - distance) / 0.35, 0, 1) * _mix(0.4, 0.9, strength)
        tint = rng.choice(np.array([[0.55, 0.2, 0.15], [0.2, 0.3, 0.6], [0.25, 0.2, 0.12], [0.6, 0.55, 0.2]]))
        _paint(albedo, alpha, albedo * (tint / 0.55))
    elif defect_type == "cut":
        length = _mix(0.1, 0.5, strength)
        heading = rng.uniform(0, np.pi)
        end = centre + length * np.array([math.cos(heading), math.sin(heading)])
        distance = _segment_distance(x, y, centre, end)
        width = max(_mix(0.005, 0.035, strength), 0.8 * pixel)
        # Cut fibres stand up and catch light around a dark gap.
        _paint(albedo, _edge_alpha(distance - 2.2 * width, size) * 0.5, albedo * 1.35)
        _paint(albedo, _edge_alpha(distance - width, size) * _mix(0.6, 0.95, strength), albedo * 0.2)
    elif defect_type == "hole":
        radius = max(_mix(0.025, 0.15, strength), 2 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 1.6), rng.uniform(0, np.pi), 0.3)
        frayed = _filtered_noise(rng, size, 0.8 * size / 256.0) * 0.12
        _paint(albedo, np.clip((1.35 - distance + frayed) / 0.15, 0, 1) * 0.45, albedo * 0.55)
        _paint(albedo, np.clip((1.0 - distance + frayed) / 0.1, 0, 1), (0.06, 0.05, 0.05))
    elif defect_type == "metal_contamination":
        for _ in range(int(rng.integers(1, 6))):
            speck_centre = centre + rng.normal(0, 0.03, 2)
            radius = max(_mix(0.012, 0.08, strength) * rng.uniform(0.5, 1.0), 1.5 * pixel)
            distance = _blob_distance(x, y, rng, speck_centre, radius, rng.uniform(1, 2.5), rng.uniform(0, np.pi), 0.3)
            inside = np.clip((1.0 - distance) / 0.2, 0, 1)
            # Metal: grey, with a specular glint towards one side.
            glint_distance = np.hypot(x - speck_centre[0] + 0.4 * radius, y - speck_centre[1] + 0.4 * radius)
            glint = np.clip(1.0 - glint_distance / radius, 0, 1)
            metal = 0.22 + 0.75 * glint**2
            _paint(albedo, inside, np.stack([metal, metal * 1.02, metal * 1.06], axis=-1))
    elif defect_type == "thread":
        length = _mix(0.2, 0.8, strength)
        points = _random_curve(rng, centre - 0.3 * length, length, rng.uniform(0, 2 * np.pi), 0.25)
        width = max(_mix(0.004, 0.022, strength), 0.7 * pixel)
        distance = _polyline_distance(x, y, points)
        colour = rng.choice(np.array([[0.85, 0.82, 0.75], [0.15, 0.12, 0.1], [0.7, 0.25, 0.2], [0.25, 0.3, 0.55]]))
        _paint(albedo, _edge_alpha(distance - 2 * width, size) * 0.4, albedo * 0.6)  # shadow
        _paint(albedo, _edge_alpha(distance - width, size) * _mix(0.5, 0.95, strength), colour)
    else:
        raise ValueError(f"unknown carpet defect type {defect_type!r}")


def _leather_defect(albedo, rng, defect_type, size) -> None:
    x, y = _pixel_grid(size)
    strength = _strength(rng)
    centre = rng.uniform(0.15, 0.85, 2)
    pixel = 1.0 / size
    if defect_type == "color":
        radius = max(_mix(0.05, 0.28, strength), 3 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 2), rng.uniform(0, np.pi), 0.3)
        alpha = np.clip((1.0 - distance) / 0.4, 0, 1) * _mix(0.5, 0.95, strength)
        factor = rng.choice(np.array([[0.4, 0.4, 0.45], [1.7, 1.5, 1.35], [0.6, 0.75, 1.4], [1.4, 0.7, 0.6]]))
        _paint(albedo, alpha, albedo * factor)
    elif defect_type == "cut":
        length = _mix(0.08, 0.45, strength)
        points = _random_curve(rng, centre, length, rng.uniform(0, 2 * np.pi), 0.08, steps=8)
        distance = _polyline_distance(x, y, points)
        width = max(_mix(0.004, 0.02, strength), 0.7 * pixel)
        _paint(albedo, _edge_alpha(distance - 2 * width, size) * 0.3, albedo * 1.3)
        _paint(albedo, _edge_alpha(distance - width, size) * _mix(0.6, 0.95, strength), albedo * 0.25)
    elif defect_type == "fold":
        heading = rng.uniform(0, np.pi)
        length = _mix(0.25, 0.8, strength)
        direction = np.array([math.cos(heading), math.sin(heading)])
        start, end = centre - 0.5 * length * direction, centre + 0.5 * length * direction
        along = ((x - start[0]) * direction[0] + (y - start[1]) * direction[1]) / length
        signed_across = -(x - centre[0]) * direction[1] + (y - centre[1]) * direction[0]
        width = _mix(0.015, 0.06, strength)
        # A crease: lit on one flank, shadowed on the other, fading at both ends.
        taper = np.clip(np.sin(np.pi * np.clip(along, 0, 1)), 0, 1) ** 0.5
        profile = signed_across / width * np.exp(-((signed_across / width) ** 2))
        shading = 1.0 + _mix(0.25, 0.8, strength) * profile * taper
        shading -= _mix(0.15, 0.45, strength) * np.exp(-((signed_across / (0.25 * width)) ** 2)) * taper
        shading -= _mix(0.05, 0.35, strength) * np.exp(-((signed_across / (1.5 * width)) ** 2)) * taper
        albedo *= shading[..., None]
    elif defect_type == "glue":
        radius = max(_mix(0.04, 0.2, strength), 3 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 1.8), rng.uniform(0, np.pi), 0.35)
        inside = np.clip((1.0 - distance) / 0.25, 0, 1)
        # Dried glue hides the grain and shines.
        smooth = ndimage.gaussian_filter(albedo, (3 * size / 256.0, 3 * size / 256.0, 0))
        glossy = smooth * np.array([1.45, 1.4, 1.2], np.float32) + 0.15 * np.clip(0.6 - distance, 0, 1)[..., None]
        _paint(albedo, inside * _mix(0.55, 0.95, strength), glossy)
    elif defect_type == "poke":
        for _ in range(int(rng.integers(1, 7))):
            poke_centre = centre + rng.normal(0, 0.04, 2)
            radius = max(_mix(0.008, 0.05, strength), 1.2 * pixel)
            distance = np.hypot(x - poke_centre[0], y - poke_centre[1])
            _paint(albedo, _edge_alpha(distance - 1.8 * radius, size) * 0.35, albedo * 1.35)
            _paint(albedo, _edge_alpha(distance - radius, size) * _mix(0.6, 0.95, strength), albedo * 0.2)
    else:
        raise ValueError(f"unknown leather defect type {defect_type!r}")


def _cable_defect(scene, rng, defect_type, size) -> None:
    strength = _strength(rng)
    wire = int(rng.integers(0, 3))
    wire_angle = np.pi / 2 + wire * 2 * np.pi / 3
    wire_centre = _CABLE_WIRE_OFFSET * np.array([math.cos(wire_angle), math.sin(wire_angle)])
    pixel = 1.0 / size
    if defect_type == "bent_wire":
        # A few strands splay out of the core over the insulation.
        direction = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(1, 4))):
            length = _mix(0.11, 0.24, strength) * rng.uniform(0.8, 1.0)
            width = max(_mix(0.012, 0.06, strength), pixel)
            scene["bent_strands"] = scene["bent_strands"] + [(wire, direction + rng.normal(0, 0.3), length, width)]
    elif defect_type == "cable_swap":
        # Two wires of one colour: another wire's insulation colour repeated.
        other = (wire + int(rng.integers(1, 3))) % 3
        colours = list(scene["wire_colours"])
        colours[wire] = colours[other]
        scene["wire_colours"] = colours
    elif defect_type == "combined":
        parts = ["bent_wire", "cut_inner_insulation", "cut_outer_insulation", "poke_insulation", "missing_wire"]
        for part in rng.choice(parts, 2, replace=False):
            _cable_defect(scene, rng, str(part), size)
    elif defect_type == "cut_inner_insulation":
        direction = rng.uniform(0, 2 * np.pi)
        radial = np.array([math.cos(direction), math.sin(direction)])
        start = wire_centre + radial * _CABLE_INSULATION_RADIUS * 1.05
        depth = _mix(0.4, 0.9, strength) * (_CABLE_INSULATION_RADIUS - _CABLE_CORE_RADIUS) + 0.02
        tangent = np.array([-radial[1], radial[0]]) * rng.uniform(-0.4, 0.4) * depth
        points = [tuple(start), tuple(start - radial * depth + tangent)]
        width = max(_mix(0.005, 0.04, strength), 0.7 * pixel)
        scene["overlays"] = scene["overlays"] + [("cut", None, points, width)]
    elif defect_type == "cut_outer_insulation":
        direction = rng.uniform(0, 2 * np.pi)
        radial = np.array([math.cos(direction), math.sin(direction)])
        tangent = np.array([-radial[1], radial[0]])
        length = _mix(0.05, 0.25, strength)
        middle = radial * (_CABLE_OUTER_RADIUS - 0.025)
        offset = tangent * 0.5 * length + radial * rng.uniform(-0.3, 0.3) * 0.5 * length
        points = [tuple(middle - offset), tuple(middle + offset)]
        width = max(_mix(0.005, 0.025, strength), 0.7 * pixel)
        scene["overlays"] = scene["overlays"] + [("cut", None, points, width)]
    elif defect_type == "missing_cable":
        present = list(scene["wire_present"])
        present[wire] = False
        scene["wire_present"] = present
    elif defect_type == "missing_wire":
        present = list(scene["core_present"])
        present[wire] = False
        scene["core_present"] = present
    elif defect_type == "poke_insulation":
        direction = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(1.1, 0.9 * _CABLE_INSULATION_RADIUS / _CABLE_CORE_RADIUS) * _CABLE_CORE_RADIUS
        centre = wire_centre + distance * np.array([math.cos(direction), math.sin(direction)])
        radius = max(_mix(0.01, 0.055, strength), 1.2 * pixel)
        scene["overlays"] = scene["overlays"] + [("poke", tuple(centre), radius, None)]
    else:
        raise ValueError(f"unknown cable defect type {defect_type!r}")


def _capsule_defect(scene, rng, defect_type, size) -> None:
    strength = _strength(rng)
    pixel = 1.0 / size
    along = rng.uniform(-_CAPSULE_HALF_STRAIGHT - 0.05, _CAPSULE_HALF_STRAIGHT + 0.05)
    across = rng.uniform(-0.7, 0.7) * _CAPSULE_RADIUS
    if defect_type == "crack":
        side = rng.choice([-1.0, 1.0])
        start = (along, side * _CAPSULE_RADIUS * 0.98)
        heading = -side * np.pi / 2 + rng.uniform(-0.6, 0.6)
        length = _mix(0.06, 0.4, strength)
        points = _jagged_line(rng, start, length, heading, int(rng.integers(3, 7)), 0.8)
        width = max(_mix(0.003, 0.018, strength), 0.6 * pixel)
        # The shell around a crack is stressed and dull, so it shows wider than the gap.
        scene["overlays"] = scene["overlays"] + [("line", points, 4 * width, 0.7), ("line", points, width, 0.2)]
    elif defect_type == "faulty_imprint":
        strokes = list(scene["print_strokes"])
        flaw = rng.choice(["missing", "shifted", "smudged"])
        if flaw == "missing":
            count = max(1, int(round(_mix(2, 17, strength))))
            drop = set(rng.choice(len(strokes), count, replace=False).tolist())
            scene["print_strokes"] = [stroke for index, stroke in enumerate(strokes) if index not in drop]
        elif flaw == "shifted":
            # One glyph printed out of place.
            glyph = int(rng.integers(0, len(_CAPSULE_PRINT)))
            first = sum(len(_DIGIT_SEGMENTS[d]) for d in _CAPSULE_PRINT[:glyph])
            last = first + len(_DIGIT_SEGMENTS[_CAPSULE_PRINT[glyph]])
            shift = rng.normal(0, 1, 2)
            shift *= _mix(0.012, 0.06, strength) / (np.linalg.norm(shift) + 1e-9)
            strokes[first:last] = [
                ((start[0] + shift[0], start[1] + shift[1]), (end[0] + shift[0], end[1] + shift[1]))
                for start, end in strokes[first:last]
            ]
            scene["print_strokes"] = strokes
        else:
            centre = (rng.uniform(0.07, 0.25), rng.uniform(-0.04, 0.04))
            extent = (_mix(0.04, 0.15, strength), _mix(0.03, 0.1, strength))
            scene["overlays"] = scene["overlays"] + [("smudge", centre, extent, _mix(0.5, 1.0, strength))]
    elif defect_type == "poke":
        radius = max(_mix(0.012, 0.085, strength), 1.2 * pixel)
        scene["overlays"] = scene["overlays"] + [("dent", (along, across), radius, 0.35)]
    elif defect_type == "scratch":
        heading = rng.uniform(0, np.pi)
        # Scratches show light on the dark half and dark on the light half.
        factor = 2.8 if along < scene["seam"] else 0.6
        # Scuffs often come as a few roughly parallel scratches.
        for _ in range(int(rng.integers(1, 5))):
            length = _mix(0.1, 0.45, strength) * rng.uniform(0.6, 1.0)
            start = (along + rng.normal(0, 0.02), across + rng.normal(0, 0.02))
            points = _random_curve(rng, start, length, heading + rng.normal(0, 0.1), 0.03, steps=6)
            width = max(_mix(0.003, 0.018, strength), 0.5 * pixel)
            scene["overlays"] = scene["overlays"] + [("line", points, width, factor)]
    elif defect_type == "squeeze":
        position = rng.uniform(-0.8, 0.8) * _CAPSULE_HALF_STRAIGHT
        depth = max(_mix(0.02, 0.09, strength), 1.5 * pixel)
        width = _mix(0.05, 0.15, rng.uniform())
        scene["squeeze"] = (position, depth, width, float(rng.choice([-1.0, 1.0])))
    else:
        raise ValueError(f"unknown capsule defect type {defect_type!r}")
