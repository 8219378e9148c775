package com.mbqonnx.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Per-step decode statistics: latency (ms), τ, budget and average bits of every decode step, with
 * tok/s, p50/p95 latency and mean bits. Percentiles interpolate linearly between order statistics
 * (numpy's default). Prefill is kept apart: it is not a decode step.
 */
public final class GenerationStats {
    private final List<double[]> steps = new ArrayList<>(); // {latencyMs, tau, budgetMs, avgBits}
    private double prefillMs = Double.NaN;
    private int prefillTokens;

    /** Records the prompt pass. */
    public void recordPrefill(int tokens, double ms) {
        prefillTokens = tokens;
        prefillMs = ms;
    }

    /** Records one decode step ({@code budgetMs} NaN in fixed modes; {@code avgBits} NaN if unknown). */
    public void recordStep(double latencyMs, double tau, double budgetMs, double avgBits) {
        steps.add(new double[] {latencyMs, tau, budgetMs, avgBits});
    }

    public int decodeSteps() {
        return steps.size();
    }

    public int prefillTokens() {
        return prefillTokens;
    }

    public double prefillMs() {
        return prefillMs;
    }

    /** Decode tokens per second: steps / total decode-step time (NaN before the first step). */
    public double tokensPerSecond() {
        double total = 0.0;
        for (double[] s : steps) {
            total += s[0];
        }
        return steps.isEmpty() ? Double.NaN : 1000.0 * steps.size() / total;
    }

    /** Tokens per second over the last {@code window} steps (the live figure in the UI). */
    public double recentTokensPerSecond(int window) {
        if (steps.isEmpty()) {
            return Double.NaN;
        }
        double total = 0.0;
        int n = Math.min(window, steps.size());
        for (int i = steps.size() - n; i < steps.size(); i++) {
            total += steps.get(i)[0];
        }
        return 1000.0 * n / total;
    }

    /** Latency percentile {@code q} in [0, 100] (linear interpolation); NaN before the first step. */
    public double latencyPercentile(double q) {
        if (!(q >= 0.0 && q <= 100.0)) {
            throw new IllegalArgumentException("percentile must be in [0, 100], got " + q);
        }
        if (steps.isEmpty()) {
            return Double.NaN;
        }
        double[] sorted = column(0);
        Arrays.sort(sorted);
        double pos = q / 100.0 * (sorted.length - 1);
        int lo = (int) Math.floor(pos);
        int hi = Math.min(lo + 1, sorted.length - 1);
        return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
    }

    public double p50Ms() {
        return latencyPercentile(50.0);
    }

    public double p95Ms() {
        return latencyPercentile(95.0);
    }

    /** Mean of the steps' average bits (NaN if no step reported bits). */
    public double averageBits() {
        double sum = 0.0;
        int n = 0;
        for (double[] s : steps) {
            if (!Double.isNaN(s[3])) {
                sum += s[3];
                n++;
            }
        }
        return n == 0 ? Double.NaN : sum / n;
    }

    /** Step latencies (ms) in order. */
    public double[] latencies() {
        return column(0);
    }

    /** τ of each step in order. */
    public double[] taus() {
        return column(1);
    }

    /** Budget (ms) of each step in order. */
    public double[] budgets() {
        return column(2);
    }

    /** Average bits of each step in order. */
    public double[] bits() {
        return column(3);
    }

    private double[] column(int c) {
        double[] out = new double[steps.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = steps.get(i)[c];
        }
        return out;
    }
}
