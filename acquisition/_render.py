"""numba kernel that draws one synthetic frame straight into the buffer it is given.

The static part of a frame (channel walls, illumination gradient, fixed-pattern noise) is computed
once, at ``open``, as an integer background image. Per frame the kernel writes
``clip(background * gain + noise)`` and then subtracts the darkness of every object in view from
the pixels around it. Objects are axis-aligned ellipses with a per-object darkness map in
normalised ellipse coordinates (so texture and nucleus squeeze with the cell), anti-aliased by
pixel coverage so that the mask boundary of a segmenter sits on the true ellipse.

Noise is a slice of a precomputed table of Gaussian values at a frame-dependent offset: drawing
24,576 random numbers per frame would cost more than the whole frame budget.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# integer columns of the sprite table
S_START = 0  # frame index of the sprite's first trajectory row
S_N = 1  # number of trajectory rows (frames)
S_ROW = 2  # first row in the trajectory pool
S_TEX = 3  # index of its darkness map in the texture pool
N_SI = 4

# float columns of the sprite table
S_RIM = 0  # extra darkness (grey levels) of the boundary rim
S_RIM_W = 1  # rim width, px
N_SF = 2

# trajectory columns (one row per frame)
T_X = 0  # centre x, px (pixel centres at integer coordinates)
T_Y = 1  # centre y, px
T_A = 2  # semi-axis along x, px
T_B = 3  # semi-axis along y, px
T_BLUR = 4  # motion blur length along x during the exposure, px
N_T = 5

GAIN_SHIFT = 10  # background gain in fixed point, 1.0 == 1 << GAIN_SHIFT


# helpers are inlined into the pixel loops: a call taking an array would cost two atomic reference
# count updates per pixel
@njit(nogil=True, cache=True, inline="always")
def _tex_at(tex, half, iv, fv, u):
    """Bilinear darkness-map value at normalised x ``u`` on the map row pair ``iv``, ``iv+1``."""
    tu = (min(max(u, -1.0), 1.0) + 1.0) * half
    iu = min(int(tu), tex.shape[1] - 2)
    fu = tu - iu
    return ((tex[iv, iu] * (1.0 - fu) + tex[iv, iu + 1] * fu) * (1.0 - fv)
            + (tex[iv + 1, iu] * (1.0 - fu) + tex[iv + 1, iu + 1] * fu) * fv)


@njit(nogil=True, cache=True, inline="always")
def _band_pixel(out, r, c, tex, half, iv, fv, gain, u, inv_a, gb2, f2, blur2, rim_g, rim_w):
    """Darken a pixel near the boundary: coverage and rim from its distance to the boundary."""
    ga = u * inv_a
    gn = math.sqrt(ga * ga + gb2)
    if gn < 1e-9:
        return
    f = math.sqrt(f2)
    d = (f - 1.0) * f / gn  # signed distance to the boundary, px (first order)
    if blur2 > 0.0:
        nx = ga / gn
        cov = 0.5 - d / math.sqrt(1.0 + blur2 * nx * nx)
    else:
        cov = 0.5 - d
    if cov <= 0.0:
        return
    if cov > 1.0:
        cov = 1.0
    t = _tex_at(tex, half, iv, fv, u) * gain
    # the rim starts half a pixel inside, so the partly covered boundary pixels show the body's
    # darkness: a coverage estimated from the interior contrast stays unbiased
    depth = -d - 0.5
    if depth > 0.0:
        if depth < 1.0:
            t += rim_g * depth
        elif depth < rim_w + 1.0:
            t += rim_g
        elif depth < rim_w + 2.0:
            t += rim_g * (rim_w + 2.0 - depth)
    val = np.int32(out[r, c]) - np.int32(cov * t + 0.5)
    out[r, c] = 0 if val < 0 else (255 if val > 255 else val)


@njit(nogil=True, cache=True)
def _draw_sprite(out, gain, xc, yc, a, b, blur, rim, rim_w, tex):
    h, w = out.shape
    tn = tex.shape[0]
    half = 0.5 * (tn - 1)
    margin = 0.75 + blur  # covers the pixels with coverage > 0 (|d| < wd/2 <= (1 + blur)/2)
    r0 = max(0, int(math.floor(yc - b - margin)))
    r1 = min(h - 1, int(math.ceil(yc + b + margin)))
    inv_a = 1.0 / a
    inv_b = 1.0 / b
    blur2 = blur * blur if blur > 0.05 else 0.0
    rim_end = rim_w + 2.5  # depth (px) beyond which neither coverage nor rim varies
    # f·E ⊕ disk((1-f)·b) ⊆ E: a pixel at normalised radius f is at least (1-f)·b deep, so
    # below this radius it is fully covered and off the rim: only its texture is needed
    deep = 1.0 - rim_end * inv_b
    deep2 = deep * deep if deep > 0.0 else -1.0
    rim_g = rim * gain
    for r in range(r0, r1 + 1):
        dy = r - yc
        v = dy * inv_b
        vv2 = v * v
        gb = v * inv_b
        gb2 = gb * gb
        # x-extent of the ellipse grown by the margin, on this row
        vv = (abs(dy) - margin) * inv_b
        if vv <= 0.0:
            hw = a + margin
        elif vv < 1.0:
            hw = a * math.sqrt(1.0 - vv * vv) + margin
        else:
            hw = margin
        c0 = max(0, int(math.floor(xc - hw)))
        c1 = min(w - 1, int(math.ceil(xc + hw)))
        # the deep interior of this row: columns with f² < deep²
        if deep2 > vv2:
            hi_ = a * math.sqrt(deep2 - vv2)
            ci0 = max(c0, int(math.floor(xc - hi_)) + 1)
            ci1 = min(c1, int(math.ceil(xc + hi_)) - 1)
        else:
            ci0 = c1 + 1
            ci1 = c1
        tv = (min(max(v, -1.0), 1.0) + 1.0) * half
        iv = min(int(tv), tn - 2)
        fv = tv - iv
        for c in range(c0, min(ci0, c1 + 1)):
            u = (c - xc) * inv_a
            _band_pixel(out, r, c, tex, half, iv, fv, gain, u, inv_a, gb2, u * u + vv2, blur2, rim_g, rim_w)
        for c in range(ci0, ci1 + 1):
            u = (c - xc) * inv_a
            val = np.int32(out[r, c]) - np.int32(_tex_at(tex, half, iv, fv, u) * gain + 0.5)
            out[r, c] = 0 if val < 0 else (255 if val > 255 else val)
        for c in range(max(ci1 + 1, c0), c1 + 1):
            u = (c - xc) * inv_a
            _band_pixel(out, r, c, tex, half, iv, fv, gain, u, inv_a, gb2, u * u + vv2, blur2, rim_g, rim_w)


@njit(nogil=True, cache=True)
def render_frame(out, bg, noise, noise_off, gain, sp_i, sp_f, n_sp, traj, tex, frame):
    """Draw frame number ``frame`` into ``out`` (uint8[H, W], written completely).

    ``out`` and ``bg`` must be C-contiguous. ``bg``: int16[H, W] background; ``noise``: int16
    table with ``noise_off + H*W <= len(noise)``; ``gain``: illumination gain of this frame
    (flicker); ``sp_i``/``sp_f``: the sprite table (first ``n_sp`` rows used); ``traj``:
    float64[rows, N_T] trajectory pool; ``tex``: float32[n, T, T] darkness maps. Returns the
    number of sprites drawn.
    """
    h, w = out.shape
    n = h * w
    o = out.reshape(n)
    b = bg.reshape(n)
    nz = noise[noise_off:noise_off + n]
    if gain == 1.0:
        # int16 throughout so that LLVM vectorises the loop: this pass touches every pixel
        lo = np.int16(0)
        hi = np.int16(255)
        for i in range(n):
            o[i] = np.uint8(min(max(b[i] + nz[i], lo), hi))
    else:
        g = np.int32(gain * (1 << GAIN_SHIFT) + 0.5)
        for i in range(n):
            v = ((np.int32(b[i]) * g) >> GAIN_SHIFT) + np.int32(nz[i])
            o[i] = np.uint8(min(max(v, 0), 255))
    drawn = 0
    for s in range(n_sp):
        k = frame - sp_i[s, S_START]
        if k < 0 or k >= sp_i[s, S_N]:
            continue
        row = sp_i[s, S_ROW] + k
        a = traj[row, T_A]
        b = traj[row, T_B]
        if a <= 0.0 or b <= 0.0:
            continue
        _draw_sprite(out, gain, traj[row, T_X], traj[row, T_Y], a, b, traj[row, T_BLUR], sp_f[s, S_RIM],
                     sp_f[s, S_RIM_W], tex[sp_i[s, S_TEX]])
        drawn += 1
    return drawn
