package com.mbqonnx.core;

import java.util.List;

/**
 * The τ → (average bits, latency) map, repaired to be monotone (latency non-increasing in τ).
 * Interpolation and inverse follow docs/controller.md exactly (float64, no fused operations).
 */
public final class LatencyMap {
    private final double[] taus;
    private final double[] bits;
    private final double[] latency;

    /** Validates and repairs the raw probe points; bad points raise {@link IllegalArgumentException}. */
    public LatencyMap(List<MapPoint> points) {
        if (points == null || points.size() < 2) {
            throw new IllegalArgumentException(
                    "latency map needs at least 2 points, got " + (points == null ? 0 : points.size()));
        }
        int n = points.size();
        taus = new double[n];
        bits = new double[n];
        latency = new double[n];
        double prevTau = Double.NEGATIVE_INFINITY;
        for (int i = 0; i < n; i++) {
            MapPoint p = points.get(i);
            if (!(p.tau >= 0.0 && p.tau <= 1.0) || p.tau <= prevTau) {
                throw new IllegalArgumentException(
                        "latency map τ values must be strictly increasing in [0, 1]; bad τ=" + p.tau);
            }
            if (!(Double.isFinite(p.latencyMs) && p.latencyMs > 0.0)) {
                throw new IllegalArgumentException(
                        "latency map latency must be finite and > 0; got " + p.latencyMs + " at τ=" + p.tau);
            }
            if (!Double.isFinite(p.avgBits)) {
                throw new IllegalArgumentException(
                        "latency map avg_bits must be finite; got " + p.avgBits + " at τ=" + p.tau);
            }
            prevTau = p.tau;
            taus[i] = p.tau;
            bits[i] = p.avgBits;
            // Running minimum: a slower point after a faster one is probe noise.
            latency[i] = i == 0 ? p.latencyMs : Math.min(p.latencyMs, latency[i - 1]);
        }
    }

    public int size() {
        return taus.length;
    }

    public double tauMin() {
        return taus[0];
    }

    public double tauMax() {
        return taus[taus.length - 1];
    }

    /** Repaired latency of point {@code i}. */
    public double latencyOfPoint(int i) {
        return latency[i];
    }

    /** τ of point {@code i}. */
    public double tauOfPoint(int i) {
        return taus[i];
    }

    /** Piecewise-linear latency (ms) at τ, clamped to the map's τ range. */
    public double latencyAt(double tau) {
        return interp(latency, tau);
    }

    /** Piecewise-linear average bits at τ, clamped to the map's τ range. */
    public double bitsAt(double tau) {
        return interp(bits, tau);
    }

    /** Smallest τ (most precision) whose map latency is ≤ {@code lat}; τ_max if none is. */
    public double tauForLatency(double lat) {
        if (latency[0] <= lat) {
            return taus[0];
        }
        for (int j = 1; j < taus.length; j++) {
            if (latency[j] <= lat) {
                return taus[j - 1] + (latency[j - 1] - lat) / (latency[j - 1] - latency[j]) * (taus[j] - taus[j - 1]);
            }
        }
        return taus[taus.length - 1];
    }

    private double interp(double[] ys, double x) {
        if (x <= taus[0]) {
            return ys[0];
        }
        for (int j = 1; j < taus.length; j++) {
            if (x <= taus[j]) {
                return ys[j - 1] + (x - taus[j - 1]) / (taus[j] - taus[j - 1]) * (ys[j] - ys[j - 1]);
            }
        }
        return ys[ys.length - 1];
    }
}
