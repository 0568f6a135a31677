import numpy as np
import pytest

from colorquant import fit
from colorquant.colorspace import get_space
from colorquant.options import ColorSpace, FitMethod
from tests.conftest import run

RGB = get_space(ColorSpace.RGB)


def test_recovers_well_separated_clusters():
    rng = np.random.default_rng(3)
    truth = np.array([[20, 20, 20], [230, 30, 40], [30, 200, 60], [40, 50, 220]])
    noise = rng.integers(-3, 4, (4, 200, 3))
    colors = np.clip(truth[:, None, :] + noise, 0, 255).reshape(-1, 3).astype(np.uint8)
    colors, counts = np.unique(colors, axis=0, return_counts=True)
    centers = fit.fit_centers(colors, counts, 4, seed=0, space=RGB)
    assert centers.shape == (4, 3) and centers.dtype == np.uint8
    for t in truth:
        assert np.abs(centers.astype(int) - t).sum(axis=1).min() <= 6


def test_same_seed_same_centers():
    rng = np.random.default_rng(4)
    colors = np.unique(rng.integers(0, 256, (5000, 3), dtype=np.uint8), axis=0)
    counts = rng.integers(1, 50, len(colors))
    a = fit.fit_centers(colors, counts, 16, seed=7, space=RGB)
    b = fit.fit_centers(colors, counts, 16, seed=7, space=RGB)
    assert np.array_equal(a, b)


def _plain_seeding(points, weights, k, random, count):
    """Weighted greedy k-means++ in plain loops, ``count`` seedings drawing from ``random`` in
    the order best_seeding documents (the first centers of all, then one row of draws per
    seeding and center); the centers of the one with the least weighted error."""
    n, trials = len(points), 2 + int(np.log(k))

    def dist(i, j):
        return sum((points[i][c] - points[j][c]) ** 2 for c in range(points.shape[1]))

    def draw(closest, u):
        total = sum(w * d for w, d in zip(weights, closest, strict=True))
        running = 0.0
        for i in range(n):
            running += weights[i] * closest[i]
            if running > u * total:
                return i
        return n - 1

    firsts = random.uniform(size=count)
    seeds = []
    for s in range(count):
        running, first = 0.0, n - 1
        for i in range(n):
            running += weights[i]
            if running > firsts[s] * sum(weights):
                first = i
                break
        seeds.append(([first], [dist(first, i) for i in range(n)]))
    for _ in range(1, k):
        draws = random.uniform(size=(count, trials))
        for s, (chosen, closest) in enumerate(seeds):
            best = None
            for u in draws[s]:
                j = draw(closest, u)
                near = [min(c, dist(j, i)) for i, c in enumerate(closest)]
                error = sum(w * d for w, d in zip(weights, near, strict=True))
                if best is None or error < best[0]:
                    best = (error, j, near)
            chosen.append(best[1])
            seeds[s] = (chosen, best[2])
    errors = [sum(w * d for w, d in zip(weights, closest, strict=True)) for _, closest in seeds]
    return points[seeds[int(np.argmin(errors))][0]]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize(("k", "count", "top", "heaviest"),
                         [(1, 1, 16, 6), (6, 1, 16, 6), (6, 3, 16, 6), (20, 3, 16, 6),
                          (40, 1, 256, 5000), (12, 2, 256, 5000)])
def test_seeding_is_weighted_greedy_kmeans_plus_plus(monkeypatch, compiled, k, count, top,
                                                     heaviest):
    # Whole coordinates and whole weights: every distance and error is exact in the
    # seeding's float32 products and float64 sums, so the numpy seeding and the compiled one
    # must pick the plain loops' very points, and leave the random stream where they do.
    if compiled:
        fit.load_kernel()
    monkeypatch.setattr(fit, "_KERNEL", fit._KERNEL if compiled else None)
    rng = np.random.default_rng(11 + top)
    points = np.unique(rng.integers(0, top, (400 if top == 16 else 900, 3)), axis=0
                       ).astype(np.float64)
    weights = rng.integers(1, heaviest, len(points)).astype(np.float64)
    random, plain = np.random.RandomState(2), np.random.RandomState(2)
    got = fit.best_seeding(points, weights, k, random, count)
    want = _plain_seeding(points, weights, k, plain, count)
    assert np.array_equal(got, want)
    assert len(np.unique(got, axis=0)) == k  # a chosen point is never drawn again
    assert random.uniform() == plain.uniform()


def test_reduce_points_keeps_weight_and_mean():
    rng = np.random.default_rng(5)
    colors = rng.integers(0, 256, (20000, 3), dtype=np.uint8)
    weights = rng.integers(1, 10, len(colors)).astype(np.float64)
    coords = RGB.encode(colors)
    means, totals = fit.reduce_points(colors, weights, coords, limit=8000)
    assert len(means) <= 32**3 and len(means) < len(colors)
    assert np.isclose(totals.sum(), weights.sum())
    overall = (coords * weights[:, None]).sum(0) / weights.sum()
    assert np.allclose((means * totals[:, None]).sum(0) / totals.sum(), overall)
    assert means.min() >= 0 and means.max() <= 1


def test_grid_is_the_finest_that_fits_the_limit():
    colors = np.unique(np.random.default_rng(5).integers(0, 256, (5000, 3), dtype=np.uint8),
                       axis=0)
    counts = {bits: len(np.unique(colors >> (8 - bits), axis=0)) for bits in (7, 6, 5)}
    assert counts[7] > counts[6] > counts[5]
    for bits, limit in ((7, counts[7]), (6, counts[7] - 1), (6, counts[6]), (5, counts[6] - 1)):
        inverse, n = fit.grid_cells(colors, limit)
        assert n == counts[bits], (bits, limit)
        direct = np.unique(colors >> (8 - bits), axis=0, return_inverse=True)[1].reshape(-1)
        assert np.array_equal(inverse, direct)  # same cells, numbered in the same order


def test_fit_points_limit_grows_with_k_within_bounds():
    limits = [fit.fit_points_limit(k) for k in (2, 16, 64, 256)]
    assert limits == sorted(limits)
    assert limits[0] == fit.FIT_POINTS_MIN and limits[-1] == fit.FIT_POINTS_MAX


@pytest.mark.parametrize("distinct", [3000, 60000])
def test_small_palette_seedings_measure_in_quarter_units_of_the_colors(monkeypatch, distinct):
    """Up to 64 colors the seedings measure distances in whole quarter units of the fit's
    points (exact, and the same in the compiled loop): four times the colors, whether the
    points are the distinct colors themselves (uint8) or grid-cell means."""
    rng = np.random.default_rng(distinct)
    colors = np.unique(rng.integers(0, 256, (distinct, 3), dtype=np.uint8), axis=0)
    weights = rng.integers(1, 50, len(colors)).astype(np.float64)
    seen, seeding = [], fit.best_seeding

    def recording(points, weights, k, random, count=1, *, by=None):
        seen.append((points, by))
        return seeding(points, weights, k, random, count, by=by)

    monkeypatch.setattr(fit, "best_seeding", recording)
    fit.fit_centers(colors, weights, 16, seed=1, space=RGB)
    assert seen
    for points, by in seen:
        assert by.min() >= 0 and by.max() <= 1020 and np.array_equal(by, np.rint(by))
        assert np.abs(by - np.asarray(points) * 255 * 4).max() <= 0.5 + 1e-9


def test_weights_pull_centers():
    colors = np.array([[0, 0, 0], [10, 0, 0], [200, 200, 200], [255, 255, 255]], dtype=np.uint8)
    heavy = fit.fit_centers(colors, np.array([1000, 1, 1, 1]), 2, seed=0, space=RGB)
    assert [0, 0, 0] in heavy.tolist()


@pytest.mark.parametrize("method", list(FitMethod))
def test_each_method_is_exact_and_reproducible(method):
    from colorquant import quantize_image

    array = np.random.default_rng(8).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    a = quantize_image(array, 12, seed=2, fit_method=method)
    b = quantize_image(array, 12, seed=2, fit_method=method)
    assert a.image.tobytes() == b.image.tobytes() and a.palette == b.palette
    flat = array.reshape(-1, 3).astype(np.int64)
    pal = a.palette.colors.astype(np.int64)
    chosen = ((flat - pal[np.asarray(a.image).reshape(-1)]) ** 2).sum(1)
    assert np.array_equal(chosen, ((flat[:, None] - pal[None]) ** 2).sum(2).min(1))
    assert a.n_colors <= 12


def test_methods_are_really_different_algorithms():
    rng = np.random.default_rng(9)
    colors = np.unique(rng.integers(0, 256, (3000, 3), dtype=np.uint8), axis=0)
    counts = rng.integers(1, 20, len(colors))
    mini = fit.fit_centers(colors, counts, 16, seed=0, space=RGB, method=FitMethod.MINIBATCH)
    lloyd = fit.fit_centers(colors, counts, 16, seed=0, space=RGB, method=FitMethod.LLOYD)
    assert not np.array_equal(mini, lloyd)


def test_fit_option_reaches_the_command(tmp_path, small_png):
    outs = []
    for method in ("minibatch", "lloyd"):
        out = tmp_path / f"{method}.png"
        assert run(small_png, "-k", "8", "--fit", method, "-o", out).returncode == 0
        outs.append(out.read_bytes())
    assert outs[0] != outs[1]
    bad = run(small_png, "--fit", "magic", "-o", tmp_path / "x.png")
    assert bad.returncode == 2


def test_exact_assignment_matches_brute_force():
    rng = np.random.default_rng(11)
    points = rng.integers(0, 256, (3000, 3)).astype(np.float32)
    weights = rng.integers(1, 9, len(points)).astype(np.float64)
    centers = rng.uniform(0, 255, (200, 3))
    for scale in (1, fit.FAST_SCALE):
        labels, error = fit._assign_exact(fit._exact_rows(points, scale), weights, centers,
                                          scale)
        q = np.rint(centers * scale).astype(np.int64)
        x = np.rint(points * scale).astype(np.int64)
        d = ((x[:, None, :] - q[None]) ** 2).sum(2)
        assert np.array_equal(labels, d.argmin(1))  # ties to the lowest index, like argmin
        assert error == float((d.min(1) * weights).sum())


def test_fast_lloyd_reaches_the_plain_lloyd_fixed_point_or_better():
    rng = np.random.default_rng(12)
    colors = np.unique(rng.integers(0, 256, (6000, 3), dtype=np.uint8), axis=0)
    weights = rng.integers(1, 30, len(colors)).astype(np.float64)
    points = RGB.metric(colors)
    start = points[rng.choice(len(points), 100, replace=False)].astype(np.float64)

    def error(centers):
        d = ((points[:, None, :].astype(np.int64) - centers[None].astype(np.int64)) ** 2).sum(2)
        return float((d.min(1) * weights).sum())

    plain = start.copy()  # 60 plain weighted Lloyd steps, a loop-level reference
    for _ in range(60):
        d = ((points[:, None, :] - plain[None]) ** 2).sum(2)
        lab = d.argmin(1)
        for j in range(len(plain)):
            if weights[lab == j].sum() > 0:
                plain[j] = np.average(points[lab == j], axis=0, weights=weights[lab == j])
    fast = fit.fast_lloyd(points, weights, start)
    assert fast.dtype == np.uint8 and fast.shape == (100, 3)
    assert error(fast) <= error(np.rint(plain)) * 1.002
    assert np.array_equal(fast, fit.fast_lloyd(points, weights, start))  # deterministic


def test_large_palettes_take_the_fast_route_and_stay_reproducible():
    rng = np.random.default_rng(13)
    colors = np.unique(rng.integers(0, 256, (20000, 3), dtype=np.uint8), axis=0)
    counts = rng.integers(1, 40, len(colors))
    a = fit.fit_centers(colors, counts, 200, seed=3, space=RGB)
    b = fit.fit_centers(colors, counts, 200, seed=3, space=RGB)
    assert np.array_equal(a, b) and 150 < len(a) <= 200


# --- the compiled assignment of the k>64 route (loaded by the worker and large batches) ---


def _brute_assignment(points, weights, centers, scale):
    """Nearest rounded center of each point by a plain loop over squared distances (ties to
    the lowest index), and the weighted error, in scaled units."""
    grid = np.rint(points).astype(np.int64) * scale
    quant = np.rint(centers * scale).astype(np.int64)
    labels = np.empty(len(grid), dtype=np.int64)
    error = 0
    for i, x in enumerate(grid):
        d = ((quant - x) ** 2).sum(axis=1)
        labels[i] = int(np.argmin(d))  # the first of equals
        error += int(d[labels[i]]) * int(weights[i])
    return labels, float(error)


@pytest.mark.parametrize(("k", "top"), [(256, 255), (100, 30), (17, 255), (3, 255), (2, 4)])
def test_compiled_assignment_equals_brute_force_and_the_blas_one(k, top):
    from colorquant import fitkernel

    rng = np.random.default_rng(k)
    points = rng.integers(0, 256, (3000, 3)).astype(np.float64)
    points[:400] = points[400:800]  # repeated points
    weights = rng.integers(1, 60, len(points)).astype(np.float64)
    # whole-number centers in a small box: many exact ties; two duplicated centers
    centers = rng.integers(0, top + 1, (k, 3)).astype(np.float64) + rng.choice([0, 0.25], (k, 3))
    centers[-1] = centers[0]
    for scale in (1, fit.FAST_SCALE):
        truth, truth_error = _brute_assignment(points, weights, centers, scale)
        blas = fit._assign_exact(fit._exact_rows(points, scale), weights, centers, scale)
        assert np.array_equal(blas[0], truth) and blas[1] == truth_error
        quant = np.rint(centers * scale)
        found = fitkernel.center_neighbors(quant, fit.FAST_NEIGHBORS)
        # any previous centers; or none, each point starting from the one before it
        for start, chain in ((rng.integers(0, k, len(points)), False),
                             (np.zeros(len(points)), True), (truth.copy(), False)):
            labels = start.astype(np.int64)
            lower = np.full(len(points), -np.inf)  # no bound known
            error, full, sums, totals = fitkernel.assign(
                points * scale, weights, weights[:, None] * points, quant, labels, *found,
                lower, np.zeros(k), 0, len(points), chain)
            assert np.array_equal(labels, truth) and error == truth_error
            assert np.array_equal(totals, np.bincount(truth, weights=weights, minlength=k))
            assert np.array_equal(sums[:, 1], np.bincount(truth, weights=weights * points[:, 1],
                                                          minlength=k))
        if k > 4 * fit.FAST_NEIGHBORS and top == 255:  # from the right centers, spread like
            assert full < 0.2 * len(points)  # the points: few full searches


def _weighted_points(seed, n, heaviest):
    """The random stream, then ``n`` whole-number RGB points, their whole-number weights
    (1 to ``heaviest - 1``) and weighted coordinates drawn from it."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 256, (n, 3)).astype(np.float64)
    weights = rng.integers(1, heaviest, n).astype(np.float64)
    return rng, points, weights, weights[:, None] * points


@pytest.mark.parametrize("k", [3, 16, 64, 256])
def test_compiled_passes_with_bounds_stay_exact_as_centers_move(k):
    """Pass after pass, the bounds the kernel keeps (and the points they let it skip) never
    change an answer: labels, error and sums equal a brute-force pass at every step, with
    centers moving by small and large steps, some not at all, some onto each other."""
    from colorquant import fitkernel

    rng, points, weights, weighted = _weighted_points(100 + k, 4000, 40)
    centers = rng.uniform(0, 255, (k, 3))
    scale = fit.FAST_SCALE
    labels = _brute_assignment(points, weights, centers, scale)[0]
    lower, previous = np.full(len(points), -np.inf), None
    for step in range(12):
        quant = np.rint(centers * scale)
        shift = (np.zeros(k) if previous is None
                 else np.sqrt(((quant - previous) ** 2).sum(axis=1)))
        found = fitkernel.center_neighbors(quant, fit.FAST_NEIGHBORS)
        error, _, sums, totals = fitkernel.assign(points * scale, weights, weighted, quant,
                                                  labels, *found, lower, shift, 0, len(points),
                                                  False)
        truth, truth_error = _brute_assignment(points, weights, centers, scale)
        assert np.array_equal(labels, truth) and error == truth_error, step
        assert np.array_equal(totals, np.bincount(truth, weights=weights, minlength=k))
        assert np.array_equal(sums[:, 2], np.bincount(truth, weights=weighted[:, 2],
                                                      minlength=k))
        previous = quant
        moves = rng.normal(0, 0.3 if step % 3 else 6.0, centers.shape)
        moves[rng.random(k) < 0.3] = 0.0  # some centers stay
        centers = np.clip(centers + moves, 0, 255)
        if k > 3 and step == 5:
            centers[1] = centers[0]  # two centers meet: exact ties


@pytest.mark.parametrize("k", [5, 64, 256])
def test_compiled_ranges_side_by_side_add_up_to_the_whole_pass(k):
    """The compiled pass over ranges of the points, run on threads at once (the loop releases
    the GIL), gives every point the same center and bound as one pass over all, and the
    ranges' errors and sums add up to the whole's exactly, pass after pass."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import pairwise

    from colorquant import fitkernel

    rng, points, weights, weighted = _weighted_points(300 + k, 6000, 500)
    centers = rng.uniform(0, 255, (k, 3))
    scale = fit.FAST_SCALE
    start = _brute_assignment(points, weights, centers, scale)[0]
    whole = [start.copy(), np.full(len(points), -np.inf)]  # labels, bounds
    split = [start.copy(), np.full(len(points), -np.inf)]
    cuts = [0, 1, 1, 2500, 4999, 6000]  # an empty range, a single point
    previous = np.rint(centers * scale)
    with ThreadPoolExecutor(max_workers=len(cuts) - 1) as pool:
        for _ in range(4):
            centers = np.clip(centers + rng.normal(0, 2.0, centers.shape), 0, 255)
            quant = np.rint(centers * scale)
            shift = np.sqrt(((quant - previous) ** 2).sum(axis=1))
            found = fitkernel.center_neighbors(quant, fit.FAST_NEIGHBORS)
            args = (points * scale, weights, weighted, quant)
            one = fitkernel.assign(*args, whole[0], *found, whole[1], shift, 0, len(points),
                                   False)
            parts = list(pool.map(lambda r, a=args, f=found, s=shift: fitkernel.assign(
                *a, split[0], *f, split[1], s, *r, False), pairwise(cuts)))
            assert np.array_equal(split[0], whole[0])
            assert np.array_equal(split[1], whole[1])
            assert sum(p[0] for p in parts) == one[0] and sum(p[1] for p in parts) == one[1]
            assert np.array_equal(sum(p[2] for p in parts), one[2])
            assert np.array_equal(sum(p[3] for p in parts), one[3])
            assert np.array_equal(whole[0], _brute_assignment(points, weights, centers, scale)[0])
            previous = quant


@pytest.mark.parametrize("k", [5, 64, 256])
def test_compiled_first_pass_chains_from_the_color_before_and_stays_exact(k):
    """With no previous centers (a fit's first pass), each point starts its search from the
    nearest center of the point before it in its range: over ranges side by side or over all,
    every label, the error and the sums equal a brute-force pass; the bounds it leaves are
    true lower bounds, so the passes after it, from those bounds, stay exact too."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import pairwise

    from colorquant import fitkernel

    rng, points, weights, _ = _weighted_points(500 + k, 6000, 500)
    order = np.lexsort(points.T[::-1])  # sorted, as a histogram's distinct colors come
    points, weights = points[order], weights[order]
    weighted = weights[:, None] * points
    centers = rng.uniform(0, 255, (k, 3))
    scale = fit.FAST_SCALE
    grid = points * scale
    cuts = [0, 1, 1, 2500, 4999, 6000]  # an empty range, a single point
    runs = {"whole": [(0, len(points))], "split": list(pairwise(cuts))}
    state = {name: [np.zeros(len(points), dtype=np.int64), np.full(len(points), -np.inf)]
             for name in runs}
    previous = np.rint(centers * scale)
    with ThreadPoolExecutor(max_workers=len(cuts) - 1) as pool:
        for step in range(4):
            if step:
                centers = np.clip(centers + rng.normal(0, 2.0, centers.shape), 0, 255)
            quant = np.rint(centers * scale)
            shift = np.sqrt(((quant - previous) ** 2).sum(axis=1))
            found = fitkernel.center_neighbors(quant, fit.FAST_NEIGHBORS)
            truth, truth_error = _brute_assignment(points, weights, centers, scale)
            distances = ((grid[:, None, :] - quant[None]) ** 2).sum(axis=2)
            distances[np.arange(len(points)), truth] = np.inf
            for name, ranges in runs.items():
                labels, lower = state[name]
                args = (grid, weights, weighted, quant, labels, *found, lower, shift)
                parts = list(pool.map(lambda r, a=args, c=step == 0: fitkernel.assign(*a, *r, c),
                                      ranges))
                assert np.array_equal(labels, truth), (name, step)
                assert sum(p[0] for p in parts) == truth_error
                assert np.array_equal(sum(p[3] for p in parts),
                                      np.bincount(truth, weights=weights, minlength=k))
                assert np.array_equal(sum(p[2] for p in parts)[:, 0],
                                      np.bincount(truth, weights=weighted[:, 0], minlength=k))
                assert np.all(lower <= np.sqrt(distances.min(axis=1))), (name, step)
            previous = quant


def _small_photo_histogram(path):
    """The distinct colors of a photo shrunk to 240x160, and their pixel counts."""
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB").resize((240, 160)))
    return np.unique(array.reshape(-1, 3), axis=0, return_counts=True)


def _thread_names_of_passes(monkeypatch):
    """Record the thread and the range of every compiled pass call (the kernel still runs)."""
    import threading

    fit.load_kernel()
    kernel, seen = fit._KERNEL, []

    class Recording:
        center_neighbors = staticmethod(kernel.center_neighbors)
        seedings = staticmethod(kernel.seedings)

        @staticmethod
        def assign(*args):
            seen.append((threading.current_thread().name, *args[-3:-1]))  # thread, range
            return kernel.assign(*args)

    monkeypatch.setattr(fit, "_KERNEL", Recording)
    return seen


@pytest.mark.parametrize("k", [16, 200])
def test_fit_is_the_same_on_any_thread_count(monkeypatch, k, flower):
    """The exact passes split over 1–4 threads: the same palette bit for bit, the helper
    threads really used, and none left running after the fit."""
    import threading

    from colorquant import dither

    colors, counts = _small_photo_histogram(flower)
    seen = _thread_names_of_passes(monkeypatch)
    monkeypatch.setattr(fit, "FAST_THREAD_POINTS", 1000)  # this small photo: several threads
    results = {}
    for threads in (1, 2, 3, 4):
        monkeypatch.setattr(dither, "_thread_limit", threads)
        seen.clear()
        results[threads] = fit.fit_centers(colors, counts, k, seed=3, space=RGB)
        # one range a thread every pass; which helper takes which range is the pool's choice
        # (on a busy machine one helper may take two)
        assert len({(start, stop) for _, start, stop in seen}) == threads
        helpers = {name for name, *_ in seen if name.startswith("colorquant-fit")}
        assert (len(helpers) > 0) == (threads > 1) and len(helpers) < threads, (threads, helpers)
        assert not [t for t in threading.enumerate() if t.name.startswith("colorquant-fit")]
    for threads in (2, 3, 4):
        assert np.array_equal(results[threads], results[1]), threads


def test_fit_goes_on_alone_when_no_thread_can_start(monkeypatch, flower):
    """A process limit of the caller's (``can't start new thread``): the passes run on this
    thread and give the same palette."""
    import threading

    from colorquant import dither

    colors, counts = _small_photo_histogram(flower)
    seen = _thread_names_of_passes(monkeypatch)
    monkeypatch.setattr(fit, "FAST_THREAD_POINTS", 1000)
    monkeypatch.setattr(dither, "_thread_limit", 3)
    threaded = fit.fit_centers(colors, counts, 100, seed=3, space=RGB)
    started = threading.Thread.start
    calls = []

    def second_fails(self):  # the first helper starts, the second cannot
        calls.append(self.name)
        if len(calls) > 1:
            raise RuntimeError("can't start new thread")
        started(self)

    monkeypatch.setattr(threading.Thread, "start", second_fails)
    seen.clear()
    alone = fit.fit_centers(colors, counts, 100, seed=3, space=RGB)
    assert len(calls) == 2 and {name for name, *_ in seen} == {threading.current_thread().name}
    assert np.array_equal(alone, threaded)
    assert not [t for t in threading.enumerate() if t.name.startswith("colorquant-fit")]


@pytest.mark.parametrize("k", [2, 5, 17, 40, 200])
def test_center_neighbors_are_the_nearest_and_radius_the_next(k):
    """... and ranges of the centers (as the fit's threads take them) give the very rows of
    the whole."""
    from itertools import pairwise

    from colorquant import fitkernel

    rng = np.random.default_rng(40 + k)
    quant = rng.integers(0, 12, (k, 3)).astype(np.float64)  # small box: tied distances
    neighbors, gaps, radius = fitkernel.center_neighbors(quant, 16)
    cuts = [0, 1, 1, k // 2, k]
    parts = [fitkernel.center_neighbors(quant, 16, a, b) for a, b in pairwise(cuts)]
    for whole, part in zip((neighbors, gaps, radius), zip(*parts, strict=True), strict=True):
        assert np.array_equal(np.concatenate(part), whole)
    count = min(16, k - 1)
    assert neighbors.shape == gaps.shape == (k, count)
    for a in range(k):
        d = ((quant - quant[a]) ** 2).sum(axis=1)
        others = np.sort(np.delete(d, a))
        assert a not in neighbors[a] and len(set(neighbors[a].tolist())) == count
        assert np.array_equal(d[neighbors[a]], others[:count])  # nearest first
        assert np.array_equal(gaps[a], np.sqrt(others[:count]))
        assert radius[a] == (np.sqrt(others[count]) if count < k - 1 else np.inf)


@pytest.mark.parametrize("k", [8, 16, 64, 65, 200, 256])
def test_fit_is_the_same_with_the_compiled_assignment(monkeypatch, k, flower):
    colors, counts = _small_photo_histogram(flower)
    monkeypatch.setattr(fit, "_KERNEL", None)
    assert not fit._Assignment(RGB.metric(colors), counts.astype(np.float64)).compiled
    plain = fit.fit_centers(colors, counts, k, seed=5, space=RGB)
    fit.load_kernel()
    assert fit._Assignment(RGB.metric(colors), counts.astype(np.float64)).compiled
    assert not fit._Assignment(RGB.metric(colors), counts + 0.5).compiled  # not whole: BLAS
    assert np.array_equal(fit.fit_centers(colors, counts, k, seed=5, space=RGB), plain)


def test_compiled_loops_cache_outside_the_package(tmp_path, monkeypatch):
    """numba's default cache (the package's ``__pycache__``) outlives ``pip uninstall`` and
    turns the folder into a namespace package that hides a later editable install; the
    loops cache in the environment instead, and a ``NUMBA_CACHE_DIR`` is kept."""
    from pathlib import Path

    from numba.core import config

    import colorquant
    from colorquant import ditherkernel, fitkernel, jit

    package = Path(colorquant.__file__).resolve().parent
    for kernel in (fitkernel.assign, fitkernel.center_neighbors, fitkernel.seedings,
                   ditherkernel.candidate_grid, ditherkernel.map_band,
                   ditherkernel.threshold_band):
        path = Path(kernel._cache.cache_path).resolve()
        assert path.is_relative_to(Path(jit.CACHE).resolve()), path
        assert not path.is_relative_to(package), path
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    twice = jit.cached(lambda x: 2 * x)
    assert twice(3) == 6
    assert str(tmp_path) == config.CACHE_DIR  # restored as it was
    assert Path(twice._cache.cache_path).is_relative_to(tmp_path)
