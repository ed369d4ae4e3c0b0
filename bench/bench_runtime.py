"""The deployed runtime on an emulated link: does the lookup table's latency model predict what a device measures
end to end, are the bytes on the wire what the table counted, and does an adaptive client follow the table?

Everything runs on this machine: the table's variants are exported (``storage.deploy.ensure_export``), timed in
``coinference.runtime`` as the ``local`` profile where the table lacks it (``measure_local``: onnxruntime, one
thread, batch 1; every split variant above the accuracy floor, since the local profile ranks timed variants only),
served by an :class:`EdgeServer` on loopback (in this process, on its own thread) and called by a
:class:`DeviceClient` whose :class:`EdgeClient` has a token-bucket :class:`Shaper` (burst 0, RTT 0) at each rate.
Only requests are shaped unless ``--shape-replies`` (the latency model's link carries the request; with the flag
the reply frame's bytes / rate join the prediction). Per rate of ``--rates``:

* **latency**: the table's variant for the rate on ``--device local --server local`` (``storage.query.query`` on
  the stored ``local`` timings, split variants, the default accuracy floor), ``--requests`` requests of real test
  images (uint8, the first ones of the test split in order; labels only score accuracy); the median measured end
  to end time (image → class) against the prediction ``device_s + server_s + (bits_mean / 8 + HEADER_BYTES) / rate``:
  the latency model (``end_to_end``) with the stored ``local`` times and the transmission of what is framed on the
  wire, the 32-byte frame header (``wire.HEADER_BYTES``) in place of the model's bitstream header (``header_bits``).
  Check: within 10 %. The raw model figure (what ``coinfer query`` prints) is shown beside it. The stored server
  time (``coinfer measure``) is what the device waits for once its bytes are sent on an unshaped loopback link: a
  request's round trip to the edge server (framing, sockets, event loop, decoding, the server part, the reply).
  What else the requests cost is measured and reported, never folded into the check: the compute inside the
  requests against the stored timings, the link overhead (transfer − shaped delay: socket, framing, asyncio,
  thread hand-off, wake-ups after the shaper's sleep; its unshaped part is in the stored server time), and
  ``time.sleep``'s overshoot.
* **bytes**: mean request frame over the requests ≤ ``bits_mean / 8 + 32``; every frame is payload + 32; and the
  package re-encodes the images the table counted its bits on (its validation images) to ``bits_mean / 8`` — so a
  gap on the test images is the images', not the framing's.

**Adaptive switching** (:class:`VariantSwitcher` over ``intervals_from_rows`` of the bandwidth table, and a
:class:`ThroughputEstimator` whose RTT is the runs' median link overhead): a step of the shaped rate from
boundary ÷ 2 to boundary × 2 and back (check: the table's variant after ≤ 5 requests at the new rate), then
``--switch-requests`` requests with ±20 % uniform multiplicative noise (seeded) on the shaped rate around
boundary × 2 (check: no switch) and boundary × 1.25 (reported) — above it, where the estimate's bias (link overhead
left in the transfer) pushes it across. The table is the first with two variants of:
local/local with the floor, rpi3, mcu (MAC-based device times, rtx2080ti server), the same without a floor — and a
boundary whose frames take ≥ 5× the link overhead at the faster rate, else the estimate measures the overhead, not
the rate (failing that, the boundary whose frames take longest; the output says which and why). Last, how far
MACs ÷ MAC/s (``calibrate_local``) is from each timed variant's device time.

After exporting the packages it times, the process pins itself (every thread, and those it starts: onnxruntime,
the edge server) to one CPU (``--cpu``; ``-1``: not pinned): client and server hand each request back and forth,
and on two CPUs every hand-off after a shaped wait wakes an idle — on a virtual machine, halted — CPU, 0.1–0.3 ms
that neither a device nor an edge server on its own machine pays. Time the variants in the pinned process
(``--remeasure``) so that the stored ``local`` timings are taken as the requests run. ``--fidelity`` keeps the
variants of one fidelity (a multi-fidelity table holds every rung). Nothing gates on a wall-clock time:
the checks are printed and written with every request to ``<out>/runtime.json``.

    .venv/bin/python bench/bench_runtime.py --db runs/search
    .venv/bin/python bench/bench_runtime.py --db runs/fig3-resnet20 --data-dir /work/shared/data/cifar10
    .venv/bin/python bench/bench_runtime.py --db runs/search --rates 100KB/s --requests 20 --switch-requests 20
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coinference.latency import LOCAL, Link, device_profile, parse_bandwidth, server_profile
from coinference.runtime import DeviceRunner, ServerRunner
from coinference.runtime.adaptive import ThroughputEstimator, VariantSwitcher, intervals_from_rows
from coinference.runtime.client import DeviceClient, EdgeClient, RequestRecord, summarize
from coinference.runtime.server import EdgeServer, in_background
from coinference.runtime.shaping import LinkShape, Shaper
from coinference.runtime.wire import HEADER_BYTES, encode_reply
from search.runs import find_table
from storage import open_table
from storage.deploy import TIMING_RUNS, ensure_export, host_label, measure_local, runtime_label, time_package_samples
from storage.errors import NoFeasibleVariantError
from storage.plots import fmt_rate
from storage.query import bandwidth_table, floor_label, query, resolve_floor
from storage.records import highest_fidelity

RATES = "10KB/s,100KB/s,1MB/s,3MB/s,10MB/s"
TOLERANCE = 0.10
"""Largest relative gap between the median measured latency and the prediction."""
MAX_SWITCH_REQUESTS = 5
"""Requests at a new rate after which the client must use the table's variant."""
NOISE = 0.20
"""Multiplicative noise on the shaped rate: × U(1 − NOISE, 1 + NOISE) per request."""
WARMUP = 10
"""Untimed requests before each timed run (onnxruntime's first runs, the connection)."""
EXPORT_IMAGES = 64
"""Test images an export is verified on."""
STEP = 2.0
"""A rate step goes from boundary ÷ STEP to boundary × STEP (a 4× step; the switcher's hysteresis is 10 %): well
inside both intervals, and no faster than needed, since the faster the rate the less a frame's time says of it."""
RESOLVE = 5.0
"""A switching experiment's frames must take this many times the link overhead at its faster rate, or the
throughput estimate measures the overhead rather than the rate."""


@dataclass
class Bench:
    """What every experiment shares: the table, the profiles, the test images and one runner pair per variant."""

    table: Any
    home: Path
    records: list[Any]
    """Split variants with status ok (whole-model candidates have no split package)."""
    floor: float | None
    data_dir: Path | None
    n_images: int
    timing_runs: int
    inputs: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray, Any, Any]] = field(default_factory=dict)
    runners: dict[str, tuple[DeviceRunner, ServerRunner]] = field(default_factory=dict)
    val_images: dict[tuple[str, int | None, str], np.ndarray] = field(default_factory=dict)
    table_payloads: dict[str, list[int]] = field(default_factory=dict)
    """Payload bytes of each image of :meth:`table_images`, per variant."""

    def data(self, rec: Any) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        """(uint8 test images (N, C, H, W), labels, input shape, normalisation) for ``rec``'s data set."""
        from coinference.data import load_dataset
        from search.cli.measure import export_inputs

        key = (rec.spec.dataset, rec.spec.weights_sha256)
        if key not in self.inputs:
            images, shape, norm = export_inputs(rec, self.data_dir, self.n_images)
            labels = load_dataset(rec.spec.dataset, self.data_dir).test_y[: self.n_images].numpy()
            self.inputs[key] = images, labels, shape, norm
        return self.inputs[key]

    def package(self, rec: Any) -> Path:
        images, _, shape, norm = self.data(rec)
        path, written = ensure_export(rec, self.home, images[:EXPORT_IMAGES], shape, norm)
        if written:
            self.table.add_artifacts(rec.key, {"export/manifest": path / "manifest.json"})
            print(f"  exported {rec.key[:12]} → {path}", flush=True)
        return path

    def ensure_timed(self, remeasure: bool, pin: Any = None) -> None:
        """Time (``measure_local``) every split variant above the floor that lacks ``local`` timings: once one is
        timed, query on the local profile ranks only timed variants. Every package is exported first, then
        ``pin()`` (if given) runs, then the timings are taken: exports run PyTorch on every CPU, timings and
        requests on the one the bench pins itself to."""
        todo = [
            r for r in self.records
            if (self.floor is None or r.measurement.accuracy >= self.floor)
            and (remeasure or r.timing(LOCAL, "device") is None or r.timing(LOCAL, "server") is None)
        ]  # fmt: skip
        packages = {rec.key: self.package(rec) for rec in todo}
        if pin is not None:
            pin()
        for rec in todo:
            images = self.data(rec)[0]
            measure_local(self.table, rec, packages[rec.key], images, self.timing_runs)
            print(f"  timed {rec.key[:12]} on this machine ({self.timing_runs} images per part)", flush=True)
        if todo:
            keys = {r.key for r in self.records}
            self.records = [r for r in self.table.variants(status="ok") if r.key in keys]

    def table_images(self, rec: Any) -> np.ndarray:
        """The uint8 images the table's ``bits_mean`` was counted on: the first ``bits_limit`` validation images
        (of the first ``eval_limit``) of the spec's validation split, as ``coinference.build`` counts them."""
        from coinference.data import load_dataset
        from coinference.fidelity import FIDELITIES

        key = (rec.spec.dataset, rec.spec.val_size, rec.spec.fidelity)
        if key not in self.val_images:
            fid = FIDELITIES.get(rec.spec.fidelity)
            n = min(x for x in (fid.eval_limit, fid.bits_limit, 1 << 30) if x is not None)
            data = load_dataset(rec.spec.dataset, self.data_dir, val_size=rec.spec.val_size).evaluated_on("val")
            self.val_images[key] = data.test_x[:n].numpy()
        return self.val_images[key]

    def runner(self, rec: Any) -> tuple[DeviceRunner, ServerRunner]:
        if rec.key not in self.runners:
            path = self.package(rec)
            self.runners[rec.key] = DeviceRunner(path), ServerRunner(path)
        return self.runners[rec.key]

    def get(self, key: str) -> Any:
        return next(r for r in self.records if r.key == key)


# ------------------------------------------------------------------------------------------------ requests
def run_requests(
    port: int, bench: Bench, keys: Sequence[str], n: int, rates: Sequence[float | None], switcher: Any = None,
    estimator: Any = None, shape_replies: bool = False, warmup: int = WARMUP,
) -> list[RequestRecord]:  # fmt: skip
    """``n`` requests of the first test images (cycled), request ``i`` shaped at ``rates[i]`` (None: unshaped);
    without a switcher after ``warmup`` untimed ones at ``rates[0]`` (with one they would move its estimate)."""
    encoders = {k: bench.runner(bench.get(k))[0] for k in keys}
    images, labels, _, _ = bench.data(bench.get(keys[0]))
    # This process holds PyTorch (exports, calibrate_local): a full collection of its heap stalls ~0.1 s, which a
    # torch-free device process does not. Everything made so far is left out of collections from here on.
    gc.collect()
    gc.freeze()
    out = []
    with EdgeClient("127.0.0.1", port) as link:
        client = DeviceClient(link, encoders, None if switcher else keys[0], switcher, estimator)
        shaped: float | None = -1.0
        for i in range(0 if switcher else -warmup, n):
            rate = rates[max(i, 0)]
            if rate != shaped:  # a fresh bucket: with burst 0 and one request at a time, the delays of one bucket
                link.shaper = None if rate is None else Shaper(LinkShape(rate, shape_replies=shape_replies))
                shaped = rate
            j = max(i, 0) % len(images)
            rec = client.infer(images[j], int(labels[j]))
            if i >= 0:
                out.append(rec)
    return out


def pin_to(cpu: int) -> None:
    """Run every thread of this process, and every thread it starts later, on ``cpu``.

    The device client and the edge server of this bench share one machine and hand each request back and forth;
    on two CPUs every hand-off after a shaped wait wakes an idle (on a virtual machine: halted) CPU, which costs
    0.1–0.3 ms that neither a device nor an edge server of its own pays. On one CPU the waiting side's CPU is the
    running side's, as on two machines that are each busy with their own part.
    """
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})
    os.sched_setaffinity(0, {cpu})
    if "torch" in sys.modules:  # an export after this point: PyTorch's thread pool on one CPU would spin against itself
        sys.modules["torch"].set_num_threads(1)


def sleep_overshoot_s(seconds: float, n: int = 20) -> float:
    """Median of how much longer ``time.sleep(seconds)`` takes than asked, seconds."""
    over = []
    for _ in range(n):
        t0 = time.perf_counter()
        time.sleep(seconds)
        over.append(time.perf_counter() - t0 - seconds)
    return statistics.median(over)


def reply_bytes(classes: int) -> int:
    """Bytes of a reply frame with ``classes`` scores."""
    return len(encode_reply(bytes(8), 0, np.zeros(classes, np.float32)))


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def median(values: Any) -> float:
    return statistics.median(list(values))


# ------------------------------------------------------------------------------------------------ per rate
def rate_row(port: int, bench: Bench, rate: float, a: argparse.Namespace, unshaped: dict[str, float]) -> dict:
    """One rate: the table's variant, its prediction and ``a.requests`` shaped requests."""
    device, server = a.profiles
    best = query(bench.records, Link(rate), device, server, bench.floor, runners_up=0).best
    rec, m = best.record, best.record.measurement
    dev_t, srv_t = rec.timing(LOCAL, "device"), rec.timing(LOCAL, "server")
    assert m is not None and dev_t is not None and srv_t is not None  # query ranked it by them
    dev_s, srv_s = dev_t.seconds, srv_t.seconds
    dev_runner, srv_runner = bench.runner(rec)
    payload = m.bits_mean / 8
    reply = reply_bytes(srv_runner.package.classes) if a.shape_replies else 0
    transmit = (payload + HEADER_BYTES + reply) / rate
    if rec.key not in unshaped:  # the loopback's own cost, without shaping
        recs = run_requests(port, bench, [rec.key], a.overhead_requests, [None] * a.overhead_requests)
        unshaped[rec.key] = median(r.transfer_s for r in recs)
    if a.rounds == 0:
        recs = run_requests(port, bench, [rec.key], a.requests, [rate] * a.requests, shape_replies=a.shape_replies)
    else:  # the variant's local profile timed side by side with the requests, stored, and predicted from
        recs, dev_all, srv_all = [], [], []
        images = bench.data(rec)[0]
        for k in range(a.rounds):
            n_t = a.timing_runs // a.rounds + (k < a.timing_runs % a.rounds)
            n_r = a.requests // a.rounds + (k < a.requests % a.rounds)
            d, s_ = time_package_samples(bench.package(rec), images, n_t, offset=k * n_t)
            dev_all += d
            srv_all += s_
            recs += run_requests(port, bench, [rec.key], n_r, [rate] * n_r, shape_replies=a.shape_replies)
        dev_s, srv_s = median(dev_all), median(srv_all)
        for part, sec in (("device", dev_s), ("server", srv_s)):
            bench.table.record_timing(rec.key, LOCAL, part, sec, len(dev_all), runtime_label(), host_label())
    framed = dev_s + srv_s + transmit
    s = summarize(recs)
    total = median(r.total_s for r in recs)
    shaped_s = [(r.bytes_sent + (r.bytes_received if a.shape_replies else 0)) / rate for r in recs]
    link_over = median(r.transfer_s - d for r, d in zip(recs, shaped_s, strict=True))
    dev_in, srv_in = median(r.device_s + r.encode_s for r in recs), median(r.server_s for r in recs)
    if rec.key not in bench.table_payloads:
        bench.table_payloads[rec.key] = [len(dev_runner.encode(x)) for x in bench.table_images(rec)]
    on_val = bench.table_payloads[rec.key]
    return {
        "rate_bytes_per_s": rate,
        "key": rec.key,
        "variant": f"{rec.spec.split} s={rec.spec.sparsity:g} {rec.spec.codec.label}",
        "accuracy_val": m.accuracy,
        "accuracy_test_measured": s.accuracy,
        "requests": len(recs),
        "stored_device_ms": ms(dev_s),
        "stored_server_ms": ms(srv_s),
        "model_ms": ms(best.total_s),
        "model_transmit_ms": ms(best.latency.transmit_s),
        "framing": f"payload + {HEADER_BYTES} B frame header in place of the model's {m.header_bits}-bit bitstream "
        + (f"header, + the {reply} B reply (shaped)" if a.shape_replies else "header; reply not shaped"),
        "predicted_ms": ms(framed),
        "predicted_transmit_ms": ms(transmit),
        "measured_ms": ms(total),
        "measured_p90_ms": round(s.latency_ms_p90, 4),
        "ratio": total / framed,
        "latency_ok": abs(total / framed - 1) <= TOLERANCE,
        "measured_device_ms": ms(dev_in),
        "measured_server_ms": ms(srv_in),
        "measured_transfer_ms": ms(median(r.transfer_s for r in recs)),
        "link_overhead_ms": ms(link_over),
        "unshaped_overhead_ms": ms(unshaped[rec.key]),
        "sleep_overshoot_ms": ms(sleep_overshoot_s(median(shaped_s))),
        "reconstructed_ms": ms(dev_in + srv_in + transmit + link_over),
        "ratio_with_unshaped_overhead": total / (framed + unshaped[rec.key]),
        "predicted_payload_bytes": payload,
        "payload_bytes_mean": s.payload_bytes_mean,
        "payload_bytes_mean_table_images": statistics.fmean(on_val),
        "table_images": len(on_val),
        "request_bytes_mean": s.bytes_mean,
        "request_bytes_max": max(r.bytes_sent for r in recs),
        "predicted_request_bytes_max": m.bits_max / 8 + HEADER_BYTES,
        "framing_exact": all(r.bytes_sent == r.payload_bytes + HEADER_BYTES for r in recs),
        "reply_bytes": s.reply_bytes_mean,
        "bytes_ok": s.bytes_mean <= payload + HEADER_BYTES,
        "per_request": [asdict(r) for r in recs],
    }


# ------------------------------------------------------------------------------------------------ switching
def inside(lo: float, hi: float, boundary: float) -> float:
    """How far (×, at most ``STEP``) from ``boundary`` two rates can stand and each stay mid-interval around it."""
    left = math.sqrt(boundary / lo) if lo > 0 else STEP
    right = math.sqrt(hi / boundary) if math.isfinite(hi) else STEP
    return min(STEP, left, right)


@dataclass(frozen=True)
class SwitchPlan:
    """The bandwidth table the switching runs follow, the boundary they cross and what made the table."""

    intervals: list[tuple[float, str]]
    source: str
    boundary: float
    factor: float
    """The step's rates are boundary ÷ factor and boundary × factor."""
    fast_frame_s: float
    """Serialisation time of the smaller of the two variants' request frames at the faster rate, seconds."""


def switch_plan(bench: Bench, a: argparse.Namespace, overhead_s: float) -> tuple[SwitchPlan | None, list[str]]:
    """The first bandwidth table with two variants (local/local with the floor, then rpi3, mcu; then the same
    without a floor) that has a boundary with rates ≥ 1.5× either side of it whose frames take ``RESOLVE`` × the
    loopback overhead at the faster rate; failing that, the boundary whose frames take longest there."""
    tries = [(a.profiles, bench.floor)]
    tries += [((device_profile(n), server_profile("rtx2080ti")), bench.floor) for n in ("rpi3", "mcu")]
    tries += [(p, None) for p, _ in tries]
    notes, fallback = [], None
    for (dev, srv), floor in tries:
        source = f"device {dev.name}, server {srv.name}, {floor_label(floor)}"
        try:
            rows = bandwidth_table(bench.records, dev, srv, 0.0, floor)
        except NoFeasibleVariantError:  # e.g. nothing fits an MCU
            notes.append(f"{source}: no feasible variant")
            continue
        intervals = intervals_from_rows((r.bandwidth_bytes_per_s, r.key) for r in rows)
        if len(intervals) < 2:
            notes.append(f"{source}: one variant at every rate")
            continue
        bounds = [r for r, _ in intervals] + [math.inf]
        frame = {k: bench.get(k).measurement.bits_mean / 8 + HEADER_BYTES for _, k in intervals}
        plans = []
        for i in range(1, len(intervals)):
            f = inside(bounds[i - 1], bounds[i + 1], bounds[i])
            t = min(frame[intervals[i - 1][1]], frame[intervals[i][1]]) / (bounds[i] * f)
            plans.append(SwitchPlan(intervals, source, bounds[i], f, t))
        plans = [p for p in plans if p.factor >= 1.5]
        good = [p for p in plans if p.fast_frame_s >= RESOLVE * overhead_s]
        if good:
            return max(good, key=lambda p: p.factor), notes
        for p in plans:
            if fallback is None or p.fast_frame_s > fallback.fast_frame_s:
                fallback = p
        notes.append(
            f"{source}: no boundary whose frames take ≥ {RESOLVE:g}× the {overhead_s * 1e3:.3f} ms link overhead "
            f"at a rate 1.5× or more above it"
        )
    return fallback, notes


def switching(port: int, bench: Bench, plan: SwitchPlan, a: argparse.Namespace, rtt_s: float) -> dict:
    """A step of the rate across ``plan``'s boundary and back; then noisy rates around two rates above it."""
    rate_a, rate_b = plan.boundary / plan.factor, plan.boundary * plan.factor
    keys = list(dict.fromkeys(k for _, k in plan.intervals))

    def fresh(rate: float) -> tuple[VariantSwitcher, ThroughputEstimator]:
        pick = VariantSwitcher(plan.intervals).lookup(rate)
        return VariantSwitcher(plan.intervals, initial=pick), ThroughputEstimator(rtt_s=rtt_s)

    steps, n = [], a.step_requests
    for r0, r1 in ((rate_a, rate_b), (rate_b, rate_a)):
        sw, est = fresh(r0)
        recs = run_requests(port, bench, keys, 2 * n, [r0] * n + [r1] * n, sw, est, a.shape_replies)
        want0, want1 = sw.lookup(r0)[:16], sw.lookup(r1)[:16]
        after = [r.variant_id for r in recs[n:]]
        late = next((j for j, v in enumerate(after) if v == want1), len(after))
        steps.append({
            "from_rate": r0, "to_rate": r1, "from_variant": want0, "to_variant": want1,
            "held_before_step": all(r.variant_id == want0 for r in recs[:n]), "requests_before_switch": late,
            "stayed_after": all(v == want1 for v in after[late:]), "switches": summarize(recs).switches,
            "ok": late <= MAX_SWITCH_REQUESTS, "rate_estimates": [r.rate_estimate for r in recs],
            "variants": [r.variant_id for r in recs],
        })  # fmt: skip
    rng = np.random.default_rng(a.seed)
    noise = []
    # above the boundary: the estimate's errors (link overhead left in the transfer) push it down, across
    for where, center in (("well inside", rate_b), ("25 % from the boundary", plan.boundary * 1.25)):
        rates = [float(x) for x in center * rng.uniform(1 - NOISE, 1 + NOISE, a.switch_requests)]
        sw, est = fresh(center)
        recs = run_requests(port, bench, keys, a.switch_requests, rates, sw, est, a.shape_replies)
        s = summarize(recs)
        est_rates = [r.rate_estimate for r in recs if r.rate_estimate]
        noise.append({
            "where": where, "rate": center, "variant": sw.lookup(center)[:16], "requests": len(recs),
            "switches": s.switches, "ok": s.switches == 0, "variants": s.variants,
            "estimate_median": median(est_rates) if est_rates else None,
            "rate_estimates": [r.rate_estimate for r in recs], "shaped_rates": rates,
        })  # fmt: skip
    return {
        "table": plan.source, "intervals": plan.intervals, "boundary": plan.boundary, "factor": plan.factor,
        "fast_frame_ms": ms(plan.fast_frame_s), "estimator_rtt_ms": ms(rtt_s), "steps": steps, "noise": noise,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ MACs
def mac_rows(bench: Bench, macs_per_s: float, runs: int) -> list[dict]:
    """Every variant with a stored ``local`` device time: MACs ÷ MAC/s against it, and against the device part
    alone (without the byte coder) timed now."""
    rows = []
    for r in sorted(bench.records, key=lambda r: r.measurement.device_macs):
        t = r.timing(LOCAL, "device")
        if t is None:
            continue
        dev = bench.runner(r)[0]
        images = bench.data(r)[0]
        for x in images[:WARMUP]:
            dev.encode_timed(x)
        timed = [dev.encode_timed(images[i % len(images)]) for i in range(runs)]
        net = median(e.device_s for e in timed)
        pred = r.measurement.device_macs / macs_per_s
        rows.append({
            "key": r.key, "split": r.spec.split, "sparsity": r.spec.sparsity, "codec": r.spec.codec.label,
            "device_macs": r.measurement.device_macs, "measured_ms": ms(t.seconds), "device_part_ms": ms(net),
            "coder_ms": ms(median(e.encode_s for e in timed)), "mac_predicted_ms": ms(pred),
            "ratio": t.seconds / pred if pred > 0 else math.inf, "part_ratio": net / pred if pred > 0 else math.inf,
        })  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ report
def table(rows: list[list[Any]], head: list[str]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")


def ok(flag: bool | None) -> str:
    return "–" if flag is None else "PASS" if flag else "FAIL"


def f3(x: float) -> str:
    return f"{x:.3f}"


def report(rows: list[dict], sw: dict, macs: list[dict], a: argparse.Namespace, macs_per_s: float) -> None:
    shaped = "requests and replies" if a.shape_replies else "requests only (replies unshaped)"
    print(
        f"\nlatency: median of {a.requests} requests per rate; token bucket (burst 0, RTT 0) on {shaped}.\n"
        "  model ms = the latency model as `coinfer query --device local --server local` prints it (stored local "
        "device + server time + (bits_mean + header_bits) / 8 / rate);\n"
        f"  predicted ms = the same with what is framed on the wire: (bits_mean / 8 + {HEADER_BYTES} B frame header"
        + (f" + {rows[0]['reply_bytes']:.0f} B reply" if a.shape_replies else "")
        + ") / rate in place of its transmission; check: |measured / predicted − 1| ≤ 10 %.\n"
        "  stored server = an unshaped loopback request's round trip (coinfer measure), so it holds the unshaped "
        "link overhead;\n  measured apart: Δdevice, Δserver = median device part + coder and server compute inside "
        "the requests − the stored times (Δserver < 0: the stored time is a round trip);\n  link overhead = "
        "median (transfer − shaped bytes / rate), "
        "transfer = round trip − the server's compute (socket, framing, asyncio, thread hand-off, wake-ups after "
        "the shaper's sleep);\n  sleep + = time.sleep's median overshoot of the shaped delay; rebuilt = measured "
        "device + server + predicted transmission + link overhead;\n  last column: measured / (predicted + the "
        "median transfer of this run's unshaped loopback requests, the 'unshaped overhead' below), which counts "
        "that overhead twice now that the stored server time holds it: for comparison with runs before that."
    )
    table(
        [[fmt_rate(r["rate_bytes_per_s"]), r["key"][:12], r["variant"], f3(r["model_ms"]), f3(r["predicted_ms"]),
          f3(r["measured_ms"]), f3(r["ratio"]), ok(r["latency_ok"]),
          f3(r["measured_device_ms"] - r["stored_device_ms"]), f3(r["measured_server_ms"] - r["stored_server_ms"]),
          f3(r["link_overhead_ms"]), f3(r["sleep_overshoot_ms"]), f3(r["reconstructed_ms"]),
          f3(r["ratio_with_unshaped_overhead"])] for r in rows],
        ["rate", "variant", "split, codec", "model ms", "predicted ms", "measured ms", "ratio", "check",
         "Δdevice", "Δserver", "link overhead", "sleep +", "rebuilt ms", "ratio to predicted + unshaped overhead"],
    )  # fmt: skip
    print("\nparts (ms): stored local timings (coinfer measure: unshaped loopback requests) and medians inside the "
          "shaped requests")  # fmt: skip
    table(
        [[fmt_rate(r["rate_bytes_per_s"]), f3(r["stored_device_ms"]), f3(r["measured_device_ms"]),
          f3(r["stored_server_ms"]), f3(r["measured_server_ms"]), f3(r["predicted_transmit_ms"]),
          f3(r["measured_transfer_ms"]), f3(r["unshaped_overhead_ms"]), f3(r["measured_p90_ms"]),
          "–" if r["accuracy_test_measured"] is None else f3(r["accuracy_test_measured"])] for r in rows],
        ["rate", "device stored", "device", "server stored", "server", "transmit predicted", "transfer",
         "unshaped overhead", "total p90", "test accuracy"],
    )  # fmt: skip
    print(
        f"\nbytes: a request frame is payload + {HEADER_BYTES} B. check: mean request bytes over the requests' test "
        f"images ≤ predicted payload (bits_mean / 8: the table's mean over its own validation images) + "
        f"{HEADER_BYTES}.\n  Entropy-coded payloads vary per image: 'payload, table images' re-encodes the table's "
        "own images with the package (it should equal bits_mean / 8); exact = every frame is payload + 32 B."
    )
    table(
        [[fmt_rate(r["rate_bytes_per_s"]), r["key"][:12], f"{r['predicted_payload_bytes']:.3f}",
          f"{r['payload_bytes_mean_table_images']:.3f} ({r['table_images']})", f"{r['payload_bytes_mean']:.3f}",
          f"{r['request_bytes_mean']:.3f}", f"{r['predicted_payload_bytes'] + HEADER_BYTES:.3f}",
          r["request_bytes_max"], f"{r['predicted_request_bytes_max']:.0f}", r["framing_exact"],
          f"{r['reply_bytes']:.0f}", ok(r["bytes_ok"])] for r in rows],
        ["rate", "variant", "predicted payload", "payload, table images (n)", "payload, requests", "request mean",
         "predicted + 32", "request max", "bits_max/8 + 32", "exact", "reply", "check"],
    )  # fmt: skip
    print()
    if sw.get("skipped"):
        print(f"adaptive switching: not run: {sw['why']}")
    else:
        for note in sw.get("notes", []):
            print(f"  switching table tried: {note}")
        print(
            f"adaptive switching ({sw['table']}): boundary {fmt_rate(sw['boundary'])}, steps ×/÷ "
            f"{sw['factor']:.2f} from it (frames take {sw['fast_frame_ms']:.3f} ms at the faster rate); estimator "
            f"EWMA α 0.5 with RTT = the median link overhead of the runs above, {sw['estimator_rtt_ms']:.3f} ms; "
            f"switcher hysteresis 0.1, patience 2; {a.step_requests} requests at each rate"
        )
        table(
            [[f"{fmt_rate(s['from_rate'])} → {fmt_rate(s['to_rate'])}",
              f"{s['from_variant'][:8]} → {s['to_variant'][:8]}", s["held_before_step"],
              s["requests_before_switch"], s["stayed_after"], s["switches"], ok(s["ok"])] for s in sw["steps"]],
            ["step", "variant", "held before", "requests at the new rate before switching", "stayed", "switches",
             f"check ≤ {MAX_SWITCH_REQUESTS}"],
        )  # fmt: skip
        print(f"\n±{NOISE:.0%} uniform multiplicative noise on the shaped rate per request (seed {a.seed})")
        verdict = {True: "none", False: "switched"}
        table(
            [[n["where"], fmt_rate(n["rate"]), "–" if n["estimate_median"] is None else fmt_rate(n["estimate_median"]),
              n["variant"][:8], n["requests"], n["switches"],
              ok(n["ok"]) if n["where"] == "well inside" else verdict[n["ok"]]] for n in sw["noise"]],
            ["around", "rate", "estimate (median)", "variant", "requests", "switches", "check (no switch)"],
        )  # fmt: skip
    print(
        f"\nMAC-based device time: MACs ÷ {macs_per_s:.3g} MAC/s (calibrate_local: a PyTorch conv stack at batch 16) "
        "against the stored local device time (device part + coder, onnxruntime, batch 1) and the device part alone"
    )
    table(
        [[r["key"][:12], r["split"], f"{r['sparsity']:g}", r["codec"], f"{r['device_macs']:,}",
          f"{r['mac_predicted_ms']:.4f}", f3(r["measured_ms"]), f"{r['ratio']:.1f}", f3(r["device_part_ms"]),
          f"{r['part_ratio']:.1f}", f3(r["coder_ms"])] for r in macs],
        ["variant", "split", "sparsity", "codec", "device MACs", "MAC-predicted ms", "measured ms", "measured / MAC",
         "device part ms", "part / MAC", "coder ms"],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="lookup table: URL, SQLite file or run folder")
    ap.add_argument("--data-dir", type=Path, default=None, help="folder of a file-backed data set (cifar10)")
    ap.add_argument("--device", default=LOCAL, choices=[LOCAL], help="the requests run here: only local predicts them")
    ap.add_argument(
        "--min-accuracy", type=float, default=None,
        help="accuracy floor (default: as coinfer query, the best accuracy that fits the device − 0.02; 0: none)",
    )  # fmt: skip
    ap.add_argument("--rates", default=RATES, help=f"emulated rates, comma-separated (default {RATES})")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per rate")
    ap.add_argument("--overhead-requests", type=int, default=50, help="unshaped requests per variant")
    ap.add_argument("--step-requests", type=int, default=20, help="requests before and after a rate step")
    ap.add_argument("--switch-requests", type=int, default=200, help="requests of each noisy-rate run")
    ap.add_argument("--timing-runs", type=int, default=TIMING_RUNS, help="images per part when timing a variant")
    ap.add_argument("--remeasure", action="store_true", help="time every candidate again, replacing stored timings")
    ap.add_argument("--shape-replies", action="store_true", help="also shape replies (and predict their time)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rate noise")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/runtime"))
    ap.add_argument("--fidelity", default=None, help="only variants built at this fidelity (default: all)")
    ap.add_argument(
        "--rounds", type=int, default=None,
        help="per rate, alternate this many blocks of timing the chosen variant (--timing-runs in all) and of shaped "
        "requests (--requests in all); the timings are stored and predict (default 5, at most the counts; 0: "
        "predict from the stored timings)",
    )  # fmt: skip
    ap.add_argument(
        "--cpu", type=int, default=None,
        help="the CPU this process (device client, edge server, timing) runs on (default: the lowest it may use; "
        "-1: not pinned)",
    )  # fmt: skip
    a = ap.parse_args(argv)
    if min(a.requests, a.overhead_requests, a.step_requests, a.switch_requests, a.timing_runs) < 1:
        ap.error("request and run counts must be ≥ 1")
    if a.rounds is None:
        a.rounds = min(5, a.requests, a.timing_runs)
    if not 0 <= a.rounds <= min(a.requests, a.timing_runs):
        ap.error(f"--rounds {a.rounds} must be in [0, min(--requests, --timing-runs)]")
    allowed = sorted(os.sched_getaffinity(0))
    if a.cpu is None:
        a.cpu = allowed[0]
    elif a.cpu != -1 and a.cpu not in allowed:
        ap.error(f"--cpu {a.cpu} is not one this process may run on: {allowed}")
    rates = [parse_bandwidth(x) for x in a.rates.split(",")]

    ref = find_table(a.db, None)
    a.profiles = device, server = device_profile(a.device), server_profile(LOCAL)
    t = open_table(ref.url, create=False)
    done = t.variants(status="ok")  # without --fidelity each variant at the highest rung it reached, as commands do
    everything = [r for r in done if r.spec.fidelity == a.fidelity] if a.fidelity else highest_fidelity(done)
    if not everything:
        ap.error(f"the table holds no finished variant{'' if a.fidelity is None else ' at fidelity ' + a.fidelity}")
    split = [r for r in everything if not r.spec.whole_model]
    bench = Bench(t, ref.home, split, resolve_floor(everything, a.min_accuracy, device), a.data_dir,
                  max(a.requests, a.switch_requests, EXPORT_IMAGES), a.timing_runs)  # fmt: skip
    best = max((r.measurement.accuracy for r in split if r.measurement is not None), default=None)
    if best is None or (bench.floor is not None and best < bench.floor):
        t.close()
        sys.exit(f"bench_runtime: no split variant reaches {floor_label(bench.floor)} (best split: {best}); "
                 "pass --min-accuracy")  # fmt: skip
    print(f"table: {ref.url} ({len(split)} split variants of {len(everything)}), {floor_label(bench.floor)}")
    bench.ensure_timed(a.remeasure, None if a.cpu == -1 else lambda: pin_to(a.cpu))

    unshaped: dict[str, float] = {}
    keys = sorted({query(bench.records, Link(r), device, server, bench.floor).best.record.key for r in rates})
    with in_background(EdgeServer({k: bench.runner(bench.get(k))[1] for k in keys})) as edge:
        rows = []
        for rate in rates:
            print(f"rate {fmt_rate(rate)} …", flush=True)
            rows.append(rate_row(edge.port, bench, rate, a, unshaped))
    # the emulated link's own round trip, as the estimator should subtract it: the shaped runs' median link overhead
    overhead = median(r["link_overhead_ms"] / 1e3 for r in rows)
    plan, notes = switch_plan(bench, a, overhead)
    if plan is None:
        sw: dict[str, Any] = {"skipped": True, "why": "; ".join(notes)}
    else:
        print("adaptive switching …", flush=True)
        keys = sorted({k for _, k in plan.intervals})
        with in_background(EdgeServer({k: bench.runner(bench.get(k))[1] for k in keys})) as edge:
            sw = switching(edge.port, bench, plan, a, overhead) | {"notes": notes}
    macs = mac_rows(bench, device.macs_per_s, min(a.timing_runs, 100))
    t.close()
    report(rows, sw, macs, a, device.macs_per_s)

    checks = {
        "latency within 10 %": all(r["latency_ok"] for r in rows),
        "bytes": all(r["bytes_ok"] for r in rows),
        "framing exact": all(r["framing_exact"] for r in rows),
        "switch in ≤ 5": None if plan is None else all(s["ok"] for s in sw["steps"]),
        "no switch under noise": None if plan is None else sw["noise"][0]["ok"],
    }
    doc = {
        "table": ref.url, "accuracy_floor": bench.floor, "device_macs_per_s": device.macs_per_s,
        "shape_replies": a.shape_replies, "tolerance": TOLERANCE, "args": {k: str(v) for k, v in vars(a).items()},
        "checks": checks, "rates": rows, "switching": sw, "mac": macs,
    }  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "runtime.json"
    path.write_text(json.dumps(doc, indent=1, default=float))
    print("\nchecks: " + ", ".join(f"{k} {ok(v)}" for k, v in checks.items()))
    print(f"json: {path}")
    return doc


if __name__ == "__main__":
    main()
