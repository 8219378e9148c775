package com.mbqonnx.demo;

/**
 * The last {@code capacity} decode steps as (latency, budget) pairs for the latency-vs-budget
 * chart, plus the y-axis scale. Thread-safe: the generating thread adds, the UI thread reads.
 */
public final class ChartSeries {
    private final double[] latency;
    private final double[] budget;
    private int start;
    private int size;

    public ChartSeries(int capacity) {
        if (capacity < 2) {
            throw new IllegalArgumentException("chart capacity must be >= 2, got " + capacity);
        }
        latency = new double[capacity];
        budget = new double[capacity];
    }

    /** Appends one step (drops the oldest when full). */
    public synchronized void add(double latencyMs, double budgetMs) {
        int i = (start + size) % latency.length;
        if (size == latency.length) {
            start = (start + 1) % latency.length;
        } else {
            size++;
        }
        latency[i] = latencyMs;
        budget[i] = budgetMs;
    }

    public synchronized void clear() {
        start = 0;
        size = 0;
    }

    /** A consistent copy: {@code [0]} latencies, {@code [1]} budgets, oldest first. */
    public synchronized double[][] snapshot() {
        double[][] out = new double[2][size];
        for (int k = 0; k < size; k++) {
            int i = (start + k) % latency.length;
            out[0][k] = latency[i];
            out[1][k] = budget[i];
        }
        return out;
    }

    public int capacity() {
        return latency.length;
    }

    /** Y-axis top: 1.25 × the largest finite value, rounded up to a "nice" 1/2/5 × 10^k (≥ 1 ms). */
    public static double axisMax(double[][] snapshot) {
        double max = 0.0;
        for (double[] row : snapshot) {
            for (double v : row) {
                if (Double.isFinite(v) && v > max) {
                    max = v;
                }
            }
        }
        double target = Math.max(1.0, max * 1.25);
        double pow = Math.pow(10.0, Math.floor(Math.log10(target)));
        for (double m : new double[] {1.0, 2.0, 5.0, 10.0}) {
            if (m * pow >= target) {
                return m * pow;
            }
        }
        return 10.0 * pow;
    }
}
