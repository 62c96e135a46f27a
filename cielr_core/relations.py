"""Built-in spatial relations, computed into SSR object attributes, and SSR version bumps.

Here (not under ``reasoning``) because perception needs them too: a semantic update that changes
labels or objects must recompute them (:func:`refresh_builtin`), never carry old values over.

The first answer to an assessment of ``spatial`` is to compute these (no LLM-written code):

* left/right/above/below — ``x_rank`` (0 = leftmost centroid) and ``y_rank`` (0 = topmost), the
  image third the centroid lies in (``horizontal``: left/center/right, ``vertical``:
  top/middle/bottom), and ``is_leftmost`` / ``is_rightmost`` / ``is_topmost`` / ``is_bottommost``;
* nearest — ``nearest_object`` (id of the other object with the closest centroid) and
  ``nearest_distance_px``;
* largest/smallest — ``size_rank`` (0 = largest area), ``is_largest`` / ``is_smallest`` and the
  same within the object's label (``size_rank_in_label``);
* depth order — ``depth_rank`` (0 = nearest to the camera, from the SSR depth where 1 = nearest),
  ``is_nearest_to_camera`` / ``is_farthest_from_camera``;
* contains/inside — ``contains`` (ids whose mask lies at least ``CONTAIN_FRACTION`` inside this
  one) and ``inside`` (the converse);
* count per label — ``label_count`` and ``x_rank_in_label`` (0 = leftmost of its label).

Ties are broken by object id, so results are deterministic. Boolean flags appear only when true.

Invariant (every scene the loop makes, every SSR version in a trace, every stored ssr.json): no
built-in relation disagrees with the objects it describes. An object either has none of them or
exactly the values :func:`builtin_relations` computes for the scene it is in
(:func:`builtin_disagreements` checks it). Relations depend on every object (ranks, counts,
nearest), so a scene whose objects changed gets them recomputed for all objects or dropped for
all, and LLM-written code cannot overwrite them (:func:`with_attributes`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cielr_core.ssr import SSR, Scene

BUILTIN_RELATIONS_VERSION = "1"
CONTAIN_FRACTION = 0.9

# every attribute builtin_relations may write (flags included: they appear only when true)
BUILTIN_KEYS = frozenset({
    "x_rank", "y_rank", "horizontal", "vertical", "is_leftmost", "is_rightmost", "is_topmost",
    "is_bottommost", "size_rank", "is_largest", "is_smallest", "label_count", "x_rank_in_label",
    "size_rank_in_label", "depth_rank", "is_nearest_to_camera", "is_farthest_from_camera",
    "nearest_object", "nearest_distance_px", "contains", "inside",
})


def _ranks(ids: list[int], key) -> dict[int, int]:
    order = sorted(ids, key=lambda i: (key(i), i))
    return {i: r for r, i in enumerate(order)}


def _third(v: float, size: int, names: tuple[str, str, str]) -> str:
    f = v / size
    return names[0] if f < 1 / 3 else (names[1] if f < 2 / 3 else names[2])


def builtin_relations(scene: Scene) -> dict[int, dict[str, Any]]:
    """Relations for every object of the scene, as ``{id: {attribute: value}}``."""
    ssr = scene.ssr
    objs = ssr.objects
    ids = sorted(objs)
    out: dict[int, dict[str, Any]] = {i: {} for i in ids}
    if not ids:
        return out
    cx = {i: objs[i].centroid[0] for i in ids}
    cy = {i: objs[i].centroid[1] for i in ids}
    xr = _ranks(ids, lambda i: cx[i])
    yr = _ranks(ids, lambda i: cy[i])
    sr = _ranks(ids, lambda i: -objs[i].area)
    n = len(ids)
    with_depth = [i for i in ids if objs[i].depth is not None]
    dr = _ranks(with_depth, lambda i: -objs[i].depth)
    by_label: dict[str, list[int]] = {}
    for i in ids:
        by_label.setdefault(objs[i].label, []).append(i)
    label_x = {lab: _ranks(members, lambda i: cx[i]) for lab, members in by_label.items()}
    label_s = {lab: _ranks(members, lambda i: -objs[i].area) for lab, members in by_label.items()}
    flat = {i: scene.masks[i].reshape(-1).astype(bool) for i in ids}

    for i in ids:
        a = out[i]
        a["x_rank"] = xr[i]
        a["y_rank"] = yr[i]
        a["horizontal"] = _third(cx[i], ssr.width, ("left", "center", "right"))
        a["vertical"] = _third(cy[i], ssr.height, ("top", "middle", "bottom"))
        for flag, cond in (("is_leftmost", xr[i] == 0), ("is_rightmost", xr[i] == n - 1),
                           ("is_topmost", yr[i] == 0), ("is_bottommost", yr[i] == n - 1)):
            if cond and n > 1:
                a[flag] = True
        a["size_rank"] = sr[i]
        if n > 1 and sr[i] == 0:
            a["is_largest"] = True
        if n > 1 and sr[i] == n - 1:
            a["is_smallest"] = True
        lab = objs[i].label
        a["label_count"] = len(by_label[lab])
        a["x_rank_in_label"] = label_x[lab][i]
        a["size_rank_in_label"] = label_s[lab][i]
        if i in dr:
            a["depth_rank"] = dr[i]
            if len(dr) > 1 and dr[i] == 0:
                a["is_nearest_to_camera"] = True
            if len(dr) > 1 and dr[i] == len(dr) - 1:
                a["is_farthest_from_camera"] = True
        others = [j for j in ids if j != i]
        if others:
            j = min(others, key=lambda j: (math.hypot(cx[i] - cx[j], cy[i] - cy[j]), j))
            a["nearest_object"] = j
            a["nearest_distance_px"] = round(math.hypot(cx[i] - cx[j], cy[i] - cy[j]), 1)
        contains, inside = [], []
        for j in others:
            inter = int(np.count_nonzero(flat[i] & flat[j]))
            if inter == 0:
                continue
            if objs[j].area <= objs[i].area and inter >= CONTAIN_FRACTION * objs[j].area:
                contains.append(j)
            if objs[i].area <= objs[j].area and inter >= CONTAIN_FRACTION * objs[i].area:
                inside.append(j)
        a["contains"] = contains
        a["inside"] = inside
    return out


def has_builtin(ssr: SSR) -> bool:
    """Whether any object carries a built-in relation."""
    return any(BUILTIN_KEYS.intersection(o.attributes) for o in ssr.objects.values())


def strip_builtin(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k not in BUILTIN_KEYS}


def refresh_builtin(scene: Scene, *, compute: bool | None = None) -> Scene:
    """The same SSR version with its built-in relations made true for its current objects:
    every old value dropped, then (``compute``; default: when any object had some) recomputed for
    all objects. Returns ``scene`` itself when nothing changes."""
    ssr = scene.ssr
    if compute is None:
        compute = has_builtin(ssr)
    fresh = builtin_relations(scene) if compute else {}
    objects, changed = {}, False
    for oid, obj in ssr.objects.items():
        attrs = {**strip_builtin(obj.attributes), **fresh.get(oid, {})}
        if attrs != obj.attributes:
            changed = True
            obj = obj.model_copy(update={"attributes": attrs})
        objects[oid] = obj
    if not changed:
        return scene
    data = ssr.model_dump(mode="python")
    data["objects"] = {k: v.model_dump(mode="python") for k, v in objects.items()}
    return Scene(ssr=SSR.model_validate(data), masks=scene.masks)


def builtin_disagreements(scene: Scene) -> list[str]:
    """Every built-in relation in ``scene`` that differs from what its objects imply (empty when
    the invariant holds): a stale value, a stale flag, or an object lacking them beside objects
    that have them."""
    ssr = scene.ssr
    if not has_builtin(ssr):
        return []
    fresh = builtin_relations(scene)
    out = []
    for oid in ssr.ids:
        have = {k: v for k, v in ssr.objects[oid].attributes.items() if k in BUILTIN_KEYS}
        want = fresh[oid]
        for k in sorted(set(have) | set(want)):
            if have.get(k, "<absent>") != want.get(k, "<absent>"):
                out.append(f"object {oid} ({ssr.objects[oid].label}): {k} is {have.get(k, '<absent>')!r}, "
                           f"should be {want.get(k, '<absent>')!r}")
    return out


def with_attributes(scene: Scene, attrs: dict[int, dict[str, Any]], *, update: str, detail: Any = None) -> Scene:
    """A new Scene whose SSR is the next version: ``attrs`` merged into the objects' attributes.

    Only the ``spatial-builtin`` update may write built-in relation names; any other (LLM-written
    code) has them dropped, so a wrong value can never shadow the computed one (the dropped names
    are recorded in the version's provenance)."""
    ssr = scene.ssr
    ignored: set[str] = set()
    if update != "spatial-builtin":
        for a in attrs.values():
            ignored |= BUILTIN_KEYS.intersection(a)
        attrs = {oid: strip_builtin(a) for oid, a in attrs.items()}
        if ignored:
            detail = {**(detail if isinstance(detail, dict) else {} if detail is None else {"detail": detail}),
                      "ignored_builtin_names": sorted(ignored)}
    objects = {}
    for oid, obj in ssr.objects.items():
        new = attrs.get(oid)
        objects[oid] = obj.model_copy(update={"attributes": {**obj.attributes, **new}}) if new else obj
    return Scene(ssr=next_version(ssr, objects=objects, update=update, detail=detail), masks=scene.masks)


def next_version(ssr: SSR, *, objects: dict | None = None, update: str, detail: Any = None) -> SSR:
    prov = dict(ssr.provenance)
    prov["parent"] = ssr.digest()
    prov["update"] = {"kind": update, **({"detail": detail} if detail is not None else {})}
    data = ssr.model_dump(mode="python")
    data["objects"] = {k: v.model_dump(mode="python") for k, v in (objects or ssr.objects).items()}
    data["version"] = ssr.version + 1
    data["provenance"] = prov
    return SSR.model_validate(data)
