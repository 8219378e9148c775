package com.mbqonnx.core;

/** Tuning constants of the budget controller (defaults and ranges: docs/controller.md). */
public final class ControllerParams {
    /** Setpoint = target * (1 - headroom). */
    public final double headroom;
    /** Hysteresis band, relative to the setpoint. */
    public final double band;
    /** EMA gain of the slowdown-ratio estimate. */
    public final double gain;
    /** Median filter length over the last observed ratios (rejects isolated spikes). */
    public final int window;
    /** One observation moves the ratio by at most this factor. */
    public final double spikeFactor;
    /** Lower bound of the ratio estimate (anti-windup). */
    public final double ratioMin;
    /** Upper bound of the ratio estimate (anti-windup). */
    public final double ratioMax;

    /** The spec defaults. */
    public static ControllerParams defaults() {
        return new ControllerParams(0.05, 0.03, 0.3, 5, 2.0, 0.2, 5.0);
    }

    /** Validates every parameter; out-of-range values raise {@link IllegalArgumentException}. */
    public ControllerParams(double headroom, double band, double gain, int window, double spikeFactor,
                            double ratioMin, double ratioMax) {
        check("headroom", headroom, headroom >= 0.0 && headroom < 1.0);
        check("band", band, band >= 0.0 && band < 1.0);
        check("gain", gain, gain > 0.0 && gain <= 1.0);
        if (window < 1) {
            throw new IllegalArgumentException(
                    "controller parameter window=" + window + " is out of range (docs/controller.md)");
        }
        check("spike_factor", spikeFactor, spikeFactor >= 1.0);
        check("ratio_min", ratioMin, ratioMin > 0.0 && ratioMin <= 1.0);
        check("ratio_max", ratioMax, ratioMax >= 1.0);
        this.headroom = headroom;
        this.band = band;
        this.gain = gain;
        this.window = window;
        this.spikeFactor = spikeFactor;
        this.ratioMin = ratioMin;
        this.ratioMax = ratioMax;
    }

    private static void check(String name, double value, boolean ok) {
        if (!ok || !Double.isFinite(value)) {
            throw new IllegalArgumentException(
                    "controller parameter " + name + "=" + value + " is out of range (docs/controller.md)");
        }
    }
}
