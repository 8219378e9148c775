package com.mbqonnx.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.TreeSet;
import java.util.function.LongSupplier;

/**
 * Measures the τ → (average bits, latency) map on this device (procedure: docs/controller.md,
 * "on-device probe"): grid {@link #grid} (up to 9 tau_table rows spread in bits), one
 * untimed warm-up run, then two rounds (τ ascending, then descending), each run timing
 * {@code steps} greedy decode steps after a τ = 0 prefill of the probe prompt. Per point: median
 * step latency, mean of the steps' average bits.
 *
 * <p>The Python probe restarts every run from one prefilled cache; {@link DecoderModel} has no
 * cache snapshot, so each run here repeats the (untimed, deterministic) prefill instead.
 */
public final class LatencyProbe {
    private final DecoderModel model;
    private final ModelConfig config;
    private final LongSupplier nanoClock;
    private final int steps;

    public LatencyProbe(DecoderModel model, ModelConfig config, LongSupplier nanoClock, int steps) {
        if (steps < 1) {
            throw new IllegalArgumentException("probe steps must be >= 1, got " + steps);
        }
        this.model = model;
        this.config = config;
        this.nanoClock = nanoClock;
        this.steps = steps;
    }

    /** Most table rows in the grid (Python: {@code mbq_onnx.runtime.probe.MAX_TABLE_POINTS}). */
    static final int MAX_TABLE_POINTS = 9;

    /**
     * The probe's τ grid (sorted, unique, within [0, 1]): {0, 1} ∪ for {@value #MAX_TABLE_POINTS} evenly
     * spaced average bits between the table's least and most, the τ (clipped) of the row nearest in bits
     * (ties: the smaller τ); padded with 0.25/0.5/0.75 to >= 5 points. Rows whose τ or bits are not
     * finite are skipped. {@code tableTaus[i]} and {@code tableBits[i]} are one row. Same grid as the
     * Python probe: both are checked against tests/android/fixtures/probe_grid.json.
     */
    public static double[] grid(List<Double> tableTaus, List<Double> tableBits) {
        if (tableTaus.size() != tableBits.size()) {
            throw new IllegalArgumentException("tau table: " + tableTaus.size() + " τ values but "
                    + tableBits.size() + " average bits");
        }
        TreeSet<double[]> rows = new TreeSet<>((a, b) -> a[0] != b[0] ? Double.compare(a[0], b[0])
                : Double.compare(a[1], b[1]));
        for (int i = 0; i < tableTaus.size(); i++) {
            double tau = tableTaus.get(i);
            double bits = tableBits.get(i);
            if (Double.isFinite(tau) && Double.isFinite(bits)) {
                rows.add(new double[] {Math.min(Math.max(tau, 0.0), 1.0), bits});
            }
        }
        TreeSet<Double> set = new TreeSet<>();
        set.add(0.0);
        set.add(1.0);
        if (!rows.isEmpty()) {
            double lo = Double.POSITIVE_INFINITY;
            double hi = Double.NEGATIVE_INFINITY;
            for (double[] r : rows) {
                lo = Math.min(lo, r[1]);
                hi = Math.max(hi, r[1]);
            }
            double step = (hi - lo) / (MAX_TABLE_POINTS - 1);
            for (int k = 0; k < MAX_TABLE_POINTS; k++) {
                double target = k == MAX_TABLE_POINTS - 1 ? hi : lo + k * step; // numpy.linspace's points
                double[] best = null;
                for (double[] r : rows) { // ascending (τ, bits): the first nearest row wins ties
                    if (best == null || Math.abs(r[1] - target) < Math.abs(best[1] - target)) {
                        best = r;
                    }
                }
                set.add(best[0]);
            }
        }
        if (set.size() < 5) {
            set.add(0.25);
            set.add(0.5);
            set.add(0.75);
        }
        double[] out = new double[set.size()];
        int i = 0;
        for (double t : set) {
            out[i++] = t;
        }
        return out;
    }

    /** Runs the probe with {@code promptIds} and returns the raw (unrepaired) map points. */
    public List<MapPoint> measure(long[] promptIds) throws ModelException {
        double[] taus = grid(config.tableTaus(), config.tableBits());
        List<List<Double>> latencies = new ArrayList<>();
        List<List<Double>> bits = new ArrayList<>();
        for (int i = 0; i < taus.length; i++) {
            latencies.add(new ArrayList<>());
            bits.add(new ArrayList<>());
        }
        run(promptIds, taus[taus.length / 2], null, null); // warm-up
        for (int round = 0; round < 2; round++) {
            for (int k = 0; k < taus.length; k++) {
                int i = round == 0 ? k : taus.length - 1 - k;
                run(promptIds, taus[i], latencies.get(i), bits.get(i));
            }
        }
        List<MapPoint> points = new ArrayList<>();
        for (int i = 0; i < taus.length; i++) {
            points.add(new MapPoint(taus[i], mean(bits.get(i)), median(latencies.get(i))));
        }
        return points;
    }

    private void run(long[] promptIds, double tau, List<Double> latencyOut, List<Double> bitsOut)
            throws ModelException {
        model.reset();
        StepOutput out = model.step(promptIds, 0.0f, 0L);
        for (int s = 0; s < steps; s++) {
            long token = Sampler.argmax(out.logits);
            long t0 = nanoClock.getAsLong();
            out = model.step(new long[] {token}, (float) tau, 0L);
            double ms = (nanoClock.getAsLong() - t0) / 1e6;
            if (latencyOut != null) {
                latencyOut.add(ms);
                bitsOut.add(out.sliceCounts.length == 0 ? Double.NaN : config.averageBits(out.sliceCounts));
            }
        }
        model.reset();
    }

    static double median(List<Double> xs) {
        double[] a = new double[xs.size()];
        for (int i = 0; i < a.length; i++) {
            a[i] = xs.get(i);
        }
        Arrays.sort(a);
        int m = a.length / 2;
        return a.length % 2 == 1 ? a[m] : (a[m - 1] + a[m]) / 2.0;
    }

    static double mean(List<Double> xs) {
        double s = 0.0;
        for (double x : xs) {
            s += x;
        }
        return s / xs.size();
    }
}
