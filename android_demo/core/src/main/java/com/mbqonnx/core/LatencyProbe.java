package com.mbqonnx.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.TreeSet;
import java.util.function.LongSupplier;

/**
 * Measures the τ → (average bits, latency) map on this device (procedure: docs/controller.md,
 * "on-device probe"): grid {0, 1} ∪ tau_table (plus 0.25/0.5/0.75 if fewer than 5 values), one
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

    /** The probe's τ grid for {@code tableTaus} (sorted, unique, within [0, 1]). */
    public static double[] grid(List<Double> tableTaus) {
        TreeSet<Double> set = new TreeSet<>();
        set.add(0.0);
        set.add(1.0);
        for (double t : tableTaus) {
            set.add(Math.min(Math.max(t, 0.0), 1.0));
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
        double[] taus = grid(config.tableTaus());
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
