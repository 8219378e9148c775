package com.mbqonnx.core;

/** A controller output: the τ and forced slice count for the next step, plus diagnostics. */
public final class Decision {
    public static final String TRACKING = "tracking";
    public static final String MAX_PRECISION = "max_precision";
    public static final String INFEASIBLE = "infeasible";
    public static final String FIXED = "fixed";

    /** Router threshold fed to the graph (as float32). */
    public final double tau;
    /** Graph input {@code force_slices}; 0 = the router decides. */
    public final int forceSlices;
    /** One of {@link #TRACKING}, {@link #MAX_PRECISION}, {@link #INFEASIBLE}, {@link #FIXED}. */
    public final String status;
    /** Slowdown ratio estimate (measured / map latency). */
    public final double ratio;
    /** Predicted step latency (ms); NaN in fixed modes. */
    public final double predictedMs;

    public Decision(double tau, int forceSlices, String status, double ratio, double predictedMs) {
        this.tau = tau;
        this.forceSlices = forceSlices;
        this.status = status;
        this.ratio = ratio;
        this.predictedMs = predictedMs;
    }

    @Override
    public String toString() {
        return "Decision(tau=" + tau + ", forceSlices=" + forceSlices + ", status=" + status
                + ", ratio=" + ratio + ", predictedMs=" + predictedMs + ")";
    }
}
