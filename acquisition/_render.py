"""numba kernels of the synthetic camera: the frame renderer, which draws one frame straight into
the buffer it is given, and the per-object helpers of the scene generator.

The static part of a frame (channel walls, illumination gradient, fixed-pattern noise) is computed
once, at ``open``, as an integer background image. Per frame the kernel writes
``clip(background * gain + noise)`` and then subtracts the darkness of every object in view from
the pixels around it. Objects are axis-aligned ellipses with a per-object darkness map in
normalised ellipse coordinates (so texture and nucleus squeeze with the cell), anti-aliased by
pixel coverage so that the mask boundary of a segmenter sits on the true ellipse.

Noise is a slice of a precomputed table of Gaussian values at a frame-dependent offset: drawing
24,576 random numbers per frame would cost more than the whole frame budget.

Output is bit-identical for the same inputs whatever the speed-ups (models are trained on these
frames, tests compare pixels with the truth): every kernel evaluates the same IEEE double
expressions in the same order as the code it replaced, without fastmath (no reassociation, no
fused multiply-add); what is skipped is only what provably leaves pixels unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from numba.extending import register_jitable

from acquisition._runs import R_LAST_ID, STOP_DONE, STOP_LAGGED, STOP_TIMEOUT, end_run, publish
from mimlsort.jit import njit
from mimlsort.realtime import monotonic_ns, sleep_ns

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


# The per-pixel helpers take and return scalars only: a jitted helper that takes an array costs
# atomic reference-count updates per call even when numba inlines it (that was most of the time per
# pixel), so the arrays are indexed in the pixel loops themselves and LLVM inlines the helpers.
# register_jitable keeps the helpers plain Python functions, so ``render_frame.py_func`` runs
# entirely in Python (tests, debugging) and computes the same IEEE double operations in the same
# order: its frames are bit-identical. Darkness-map values are float32: ``float()`` on each load
# keeps the Python path in double precision as in the kernel (NumPy would stay in float32).
@register_jitable
def _clip_sub(o, dark):
    """Pixel value ``o`` darkened by ``dark`` grey levels (rounded), clipped to uint8."""
    val = np.int32(o) - np.int32(dark + 0.5)
    return 0 if val < 0 else (255 if val > 255 else val)


@register_jitable
def _lerp2(t00, t01, t10, t11, fu, omfu, fv, omfv):
    """Bilinear interpolation in a darkness-map cell (``t<v><u>``; ``omf*`` = 1 - ``f*``)."""
    return (t00 * omfu + t01 * fu) * omfv + (t10 * omfu + t11 * fu) * fv


@register_jitable
def _band_cover(ga, ga2, gb2, f2, blur2):
    """Coverage of a pixel near the boundary by the (motion-blurred) ellipse, and the signed
    distance d (px, first order) of its centre to the boundary; coverage <= 0: not touched."""
    # branch-free apart from the blur test (loop-invariant), so that the loop over a row's band
    # pixels can be vectorised; the guard keeps the Python path off a division by zero
    gn = math.sqrt(ga2 + gb2)
    ok = gn >= 1e-9
    if not ok:
        gn = 1.0
    f = math.sqrt(f2)
    d = (f - 1.0) * f / gn  # signed distance to the boundary, px (first order)
    if blur2 > 0.0:
        nx = ga / gn
        cov = 0.5 - d / math.sqrt(1.0 + blur2 * nx * nx)
    else:
        cov = 0.5 - d
    return (cov if ok else 0.0), d


@register_jitable
def _band_apply(o, cov, d, t00, t01, t10, t11, fu, omfu, fv, omfv, gain, rim_g, rim_w):
    """Pixel value ``o`` of a touched pixel near the boundary after drawing (coverage ``cov`` > 0
    and distance ``d`` from :func:`_band_cover`)."""
    if cov > 1.0:
        cov = 1.0
    t = _lerp2(t00, t01, t10, t11, fu, omfu, fv, omfv) * gain
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
    return _clip_sub(o, cov * t)


# error_model="numpy": no zero test before each division (every divisor here is guarded), which
# also lets LLVM vectorise the band pass
@njit(nogil=True, cache=True, error_model="numpy")
def render_frame(out, bg, noise, noise_off, gain, sp_i, sp_f, n_sp, traj, tex, frame):
    """Draw frame number ``frame`` into ``out`` (uint8[H, W], written completely).

    ``out``, ``bg`` and ``tex`` must be C-contiguous. ``bg``: int16[H, W] background; ``noise``: int16
    table with ``noise_off + H*W <= len(noise)``; ``gain``: illumination gain of this frame
    (flicker); ``sp_i``/``sp_f``: the sprite table (first ``n_sp`` rows used); ``traj``:
    float64[rows, N_T] trajectory pool; ``tex``: float32[n, T, T] darkness maps. Returns the
    number of sprites drawn.
    """
    h, w = out.shape
    n = h * w
    o = out.reshape(n)
    bgf = bg.reshape(n)
    nz = noise[noise_off:noise_off + n]
    # numba widens integer arithmetic to int64, which LLVM vectorises 4 pixels wide; narrowing the
    # results back explicitly (exact: no value here overflows) lets it work 16 (8) pixels wide.
    # This pass touches every pixel.
    if gain == 1.0:
        lo = np.int16(0)
        hi = np.int16(255)
        for i in range(n):
            o[i] = np.uint8(min(max(np.int16(bgf[i] + nz[i]), lo), hi))
    else:
        g = np.int32(gain * (1 << GAIN_SHIFT) + 0.5)
        lo32 = np.int32(0)
        hi32 = np.int32(255)
        for i in range(n):
            v = np.int32(np.int32(np.int32(bgf[i]) * g) >> GAIN_SHIFT)
            v = np.int32(v + np.int32(nz[i]))
            o[i] = np.uint8(min(max(v, lo32), hi32))
    tn = tex.shape[1]
    half = 0.5 * (tn - 1)
    # pixel loops index flat arrays with unsigned offsets: numba then skips the negative-index
    # wrap-around arithmetic it adds to every signed index (a third of the instructions per pixel)
    tf = tex.reshape(tex.size)
    one = np.uint64(1)
    utn = np.uint64(tn)
    # what depends on the column only, computed once per sprite instead of once per pixel (the
    # same expressions, so the same values): u/a, (u/a)², u², map column and its weights
    c_ga = np.empty(w)
    c_ga2 = np.empty(w)
    c_uu = np.empty(w)
    c_fu = np.empty(w)
    c_omfu = np.empty(w)
    c_iu = np.empty(w, np.uint64)
    # coverage and boundary distance of a row's band pixels: computed in one pass, applied in a
    # second one (the first holds the square roots and divisions and has no table look-ups)
    b_cov = np.empty(w)
    b_d = np.empty(w)
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
        xc = traj[row, T_X]
        yc = traj[row, T_Y]
        blur = traj[row, T_BLUR]
        rim_w = sp_f[s, S_RIM_W]
        tbase = sp_i[s, S_TEX] * tn * tn
        drawn += 1
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
        rim_g = sp_f[s, S_RIM] * gain
        # Pixels this far out are not drawn: the first-order distance d = (f - 1) f / |grad f|
        # and |grad f| <= f / min(a, b), so f >= 1 + D / min(a, b) gives d >= D, and
        # d >= D = sqrt(1 + blur²) / 2 gives coverage <= 0. The relative margin (1e-6) is far
        # above rounding error, so no pixel the exact formula would draw is skipped: the rows and
        # columns beyond this radius are left out.
        f_out = 1.0 + 0.5 * math.sqrt(1.0 + blur2) * (1.0 + 1e-6) / min(a, b)
        f_out2 = f_out * f_out
        for c in range(max(0, int(math.floor(xc - a - margin))), min(w - 1, int(math.ceil(xc + a + margin))) + 1):
            u = (c - xc) * inv_a
            ga = u * inv_a
            tu = (min(max(u, -1.0), 1.0) + 1.0) * half
            iu = min(int(tu), tn - 2)
            fu = tu - iu
            c_iu[c] = iu
            c_ga[c] = ga
            c_ga2[c] = ga * ga
            c_uu[c] = u * u
            c_fu[c] = fu
            c_omfu[c] = 1.0 - fu
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
            if c1 < c0 or vv2 >= f_out2:
                continue  # this row of the sprite lies outside the image or is not drawn
            hw_out = a * math.sqrt(f_out2 - vv2) * (1.0 + 1e-6)
            b0 = max(c0, int(math.floor(xc - hw_out)))
            b1 = min(c1, int(math.ceil(xc + hw_out)))
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
            omfv = 1.0 - fv
            ob = np.uint64(r * w)
            t0 = np.uint64(tbase + iv * tn)
            t1 = t0 + utn
            # the band left of the deep interior, the interior, the band right of it (a pixel in
            # both bands, possible only in a degenerate row, is drawn twice as it always was)
            ca_ = np.uint64(b0)
            cb_ = np.uint64(max(b0, min(ci0, c1 + 1)))
            for c in range(ca_, cb_):
                b_cov[c], b_d[c] = _band_cover(c_ga[c], c_ga2[c], gb2, c_uu[c] + vv2, blur2)
            for c in range(ca_, cb_):
                cov = b_cov[c]
                if cov <= 0.0:
                    continue
                iu = c_iu[c]
                o[ob + c] = _band_apply(o[ob + c], cov, b_d[c], float(tf[t0 + iu]), float(tf[t0 + iu + one]),
                                        float(tf[t1 + iu]), float(tf[t1 + iu + one]), c_fu[c], c_omfu[c], fv, omfv,
                                        gain, rim_g, rim_w)
            for c in range(np.uint64(ci0), np.uint64(max(ci1 + 1, ci0))):
                iu = c_iu[c]
                t = _lerp2(float(tf[t0 + iu]), float(tf[t0 + iu + one]), float(tf[t1 + iu]), float(tf[t1 + iu + one]),
                           c_fu[c], c_omfu[c], fv, omfv)
                o[ob + c] = _clip_sub(o[ob + c], t * gain)
            ca_ = np.uint64(max(ci1 + 1, c0))
            cb_ = np.uint64(max(ci1 + 1, c0, b1 + 1))
            for c in range(ca_, cb_):
                b_cov[c], b_d[c] = _band_cover(c_ga[c], c_ga2[c], gb2, c_uu[c] + vv2, blur2)
            for c in range(ca_, cb_):
                cov = b_cov[c]
                if cov <= 0.0:
                    continue
                iu = c_iu[c]
                o[ob + c] = _band_apply(o[ob + c], cov, b_d[c], float(tf[t0 + iu]), float(tf[t0 + iu + one]),
                                        float(tf[t1 + iu]), float(tf[t1 + iu + one]), c_fu[c], c_omfu[c], fv, omfv,
                                        gain, rim_g, rim_w)
    return drawn



@njit(nogil=True, cache=True, error_model="numpy")
def render_run(images, frame_ids, stamps, host_ns, seq, bg, noise, status, offsets, gains, chunk0, sp_i, sp_f,
               n_sp, traj, tex, idx, stop_at, realtime, t0_host, period_ns, deadline, max_lag, id_mask, id_modulus,
               ts, res):
    """The synthetic camera's grab loop for frames ``idx`` .. ``stop_at - 1``, without the GIL:
    pace each frame to ``t0_host + idx * period_ns`` (``realtime``), skip the frames ``status``
    drops (1: id gap, 2: failed buffer), render the others straight into the ring's next slot,
    write their metadata and publish each by incrementing ``seq[0]``. ``status``/``offsets``/
    ``gains`` hold the per-frame values of the block starting at frame ``chunk0``. The same
    frames, ids and timestamps as :meth:`SyntheticCamera._do_grab` frame by frame; results in ``res``."""
    cap = images.shape[0]
    last_id = res[R_LAST_ID]
    published = 0
    failed = 0
    gaps = 0
    stop = STOP_DONE
    while idx < stop_at:
        if realtime:
            now = monotonic_ns(ts)
            due = t0_host + np.int64(idx * period_ns)
            if due > now:
                if due > deadline:
                    sleep_ns(ts, deadline - now)
                    stop = STOP_TIMEOUT
                    break
                sleep_ns(ts, due - now)
            elif now - due > max_lag * period_ns:
                idx = np.int64((now - t0_host) / period_ns) - max_lag // 2
                stop = STOP_LAGGED
                break
        j = idx - chunk0
        st = status[j]
        frame = idx
        idx += 1
        if st == 1:
            continue
        if st == 2:
            failed += 1
            continue
        slot = seq[0] % cap
        render_frame(images[slot], bg, noise, offsets[j], gains[j], sp_i, sp_f, n_sp, traj, tex, frame)
        fid = frame & id_mask if id_mask else frame
        gaps += publish(frame_ids, stamps, host_ns, seq, slot, fid, np.int64(round(frame * period_ns)), last_id,
                        id_modulus, ts)
        last_id = fid
        published += 1
    end_run(res, published, idx, failed, gaps, last_id, stop)


@njit(nogil=True, cache=True)
def assemble_texture(out, body, field, f_mean, f_sd, f_contrast, dv2, du2, nuc_rad, nuc_contrast, granules, floor):
    """Compose a cell's darkness map into ``out`` (float32[T, T], map[v, u]) in one pass.

    ``body`` plus the normalised texture ``(field - f_mean) / f_sd * f_contrast`` (skipped when
    ``f_sd <= 0``), plus ``nuc_contrast`` x the nucleus coverage (the maximum over the lobes of
    ``clip((nuc_rad - dist) * 10 + 0.5, 0, 1)``, ``dist² = dv2[lobe, v] + du2[lobe, u]``; no
    lobes, no nucleus), plus ``granules`` (skipped when it is empty), at least ``floor``.
    The same operations in the same order as the NumPy expressions this replaced (one pass
    instead of some twenty array temporaries per cell): the maps are bit-identical.
    """
    tn = out.shape[0]
    lobes = dv2.shape[0]
    use_field = f_sd > 0.0
    use_gran = granules.size > 0
    # no bounds checks in the loops: the shapes are checked here
    if (out.shape[1] != tn or (use_field and field.shape != out.shape) or (use_gran and granules.shape != out.shape)
            or (lobes > 0 and (dv2.shape[1] != tn or du2.shape[0] != lobes or du2.shape[1] != tn))):
        raise ValueError("assemble_texture: array shapes do not match the map")
    for i in range(tn):
        for j in range(tn):
            t = body
            if use_field:
                t = t + (field[i, j] - f_mean) / f_sd * f_contrast
            if lobes > 0:
                nuc = 0.0
                for k in range(lobes):
                    cov = (nuc_rad - math.sqrt(dv2[k, i] + du2[k, j])) * 10.0 + 0.5
                    cov = min(max(cov, 0.0), 1.0)
                    nuc = max(nuc, cov)
                t = t + nuc * nuc_contrast
            if use_gran:
                t = t + granules[i, j]
            out[i, j] = np.float32(max(t, floor))


# -- per-object trajectory helpers: the NumPy expressions they replaced, element by element, so
# -- the same values (no transcendental functions here: those stay NumPy calls)

@njit(nogil=True, cache=True)
def squeeze_profile(x, x_start, ramp_len, x1, settle_len, v_up, v_c, v_down, s_out, v_out):
    """Squeeze progress ``s_out`` = smoothstep((x - x_start) / ramp_len) and speed ``v_out``:
    ``v_up`` -> ``v_c`` with the squeeze up to ``x1``, then ``v_c`` -> ``v_down`` over
    ``settle_len`` (smoothstep)."""
    if s_out.size < x.size or v_out.size < x.size:
        raise ValueError("squeeze_profile: output shorter than x")
    dv_in = v_c - v_up
    dv_out = v_down - v_c
    for i in range(x.size):
        z = min(max((x[i] - x_start) / ramp_len, 0.0), 1.0)
        s = z * z * (3.0 - 2.0 * z)
        s_out[i] = s
        if x[i] <= x1:
            v_out[i] = v_up + dv_in * s
        else:
            z = min(max((x[i] - x1) / settle_len, 0.0), 1.0)
            v_out[i] = v_c + dv_out * (z * z * (3.0 - 2.0 * z))


@njit(nogil=True, cache=True)
def time_grid(x, v, birth, t_out):
    """Times at the grid positions ``x`` moving at speed ``v`` (trapezoid rule, cumulative)."""
    if v.size < x.size or t_out.size < x.size or x.size == 0:
        raise ValueError("time_grid: v or t_out shorter than x, or x empty")
    t_out[0] = birth + 0.0
    acc = 0.0
    for i in range(1, x.size):
        acc += (x[i] - x[i - 1]) / (0.5 * (v[i] + v[i - 1]))
        t_out[i] = birth + acc


@njit(nogil=True, cache=True)
def gauss_exponents(g, centres, two_sig2, out):
    """``out[k, j] = -((g[j] - centres[k]) ** 2) / two_sig2``: the exponents of a row of Gaussian
    bumps (the exponential itself stays a NumPy call)."""
    if out.shape[0] != centres.size or out.shape[1] != g.size:
        raise ValueError("gauss_exponents: out must be [centres, g]")
    for k in range(centres.size):
        for j in range(g.size):
            d = g[j] - centres[k]
            out[k, j] = -(d * d) / two_sig2


@njit(nogil=True, cache=True)
def smoothstep_ramp(x, x_start, length, out):
    """``out`` = smoothstep((x - x_start) / length): 0 before ``x_start``, 1 after ``+ length``."""
    if out.size < x.size:
        raise ValueError("smoothstep_ramp: output shorter than x")
    for i in range(x.size):
        z = min(max((x[i] - x_start) / length, 0.0), 1.0)
        out[i] = z * z * (3.0 - 2.0 * z)


@njit(nogil=True, cache=True)
def squeezed_shape(sq, rest, d_di, R, di_out, a_out):
    """DI ``rest + d_di * sq`` and the semi-axis along the flow ``R * sqrt((1 + DI) / (1 - DI))``
    (area conserved) for a squeeze progress ``sq``."""
    if di_out.size < sq.size or a_out.size < sq.size:
        raise ValueError("squeezed_shape: output shorter than sq")
    for i in range(sq.size):
        di = rest + d_di * sq[i]
        di_out[i] = di
        a_out[i] = R * math.sqrt((1.0 + di) / (1.0 - di))


@njit(nogil=True, cache=True)
def semi_axes(di, R, traj):
    """Trajectory columns T_A, T_B: ``R * k`` and ``R / k``, k = sqrt((1 + DI) / (1 - DI))."""
    if traj.shape[0] < di.size or traj.shape[1] < N_T:
        raise ValueError("semi_axes: trajectory table too small")
    for i in range(di.size):
        k = math.sqrt((1.0 + di[i]) / (1.0 - di[i]))
        traj[i, T_A] = R * k
        traj[i, T_B] = R / k


@njit(nogil=True, cache=True, error_model="numpy")
def max_speed_between(x, t, x0, x1):
    """Largest step speed (x[i+1] - x[i]) / (t[i+1] - t[i]) over the steps whose midpoint lies in
    [x0, x1]; NaN if none does."""
    best = math.nan
    for i in range(x.size - 1):
        xm = 0.5 * (x[i + 1] + x[i])
        if x0 <= xm <= x1:
            vm = (x[i + 1] - x[i]) / (t[i + 1] - t[i])
            if not vm <= best:  # also takes the first one (best is NaN)
                best = vm
    return best


def compile_object_kernels() -> None:
    """Compile (or load from the cache) the per-object kernels with the argument types the scene
    generator uses, so that the first object does not pay for it in the middle of a run."""
    x = np.zeros(4)
    a = np.zeros(4)
    b = np.zeros(4)
    squeeze_profile(x, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, a, b)
    squeezed_shape(x, 0.0, 0.5, 1.0, a, b)
    semi_axes(x, 1.0, np.zeros((4, N_T)))
    max_speed_between(x, b, 0.0, 1.0)
    time_grid(x, b + 1.0, 0.0, a)
    smoothstep_ramp(x, 0.0, 1.0, a)
    gauss_exponents(x, a, 1.0, np.zeros((4, 4)))
    none = np.zeros((0, 0))
    assemble_texture(np.zeros((4, 4), np.float32), 1.0, np.zeros((4, 4)), 0.0, 0.0, 0.0, none, none, 0.0, 0.0,
                     none, 0.0)
