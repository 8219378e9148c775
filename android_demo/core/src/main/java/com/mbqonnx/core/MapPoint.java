package com.mbqonnx.core;

/** One probe point of the latency map: router threshold τ, average bits, step latency (ms). */
public final class MapPoint {
    public final double tau;
    public final double avgBits;
    public final double latencyMs;

    public MapPoint(double tau, double avgBits, double latencyMs) {
        this.tau = tau;
        this.avgBits = avgBits;
        this.latencyMs = latencyMs;
    }

    @Override
    public String toString() {
        return "MapPoint(tau=" + tau + ", avgBits=" + avgBits + ", latencyMs=" + latencyMs + ")";
    }
}
