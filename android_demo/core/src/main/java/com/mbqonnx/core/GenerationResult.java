package com.mbqonnx.core;

/** Outcome of {@link Generator#generate}: new token ids, why it stopped, statistics. */
public final class GenerationResult {
    public static final String STOP_TOKEN = "stop_token";
    public static final String STOP_MAX_TOKENS = "max_new_tokens";
    public static final String STOP_REQUESTED = "stopped";

    /** Generated ids (a stop token is not included). */
    public final long[] tokens;
    /** {@link #STOP_TOKEN}, {@link #STOP_MAX_TOKENS} or {@link #STOP_REQUESTED}. */
    public final String stopReason;
    public final GenerationStats stats;
    /** The controller's last decision (its status says e.g. "infeasible"). */
    public final Decision lastDecision;

    public GenerationResult(long[] tokens, String stopReason, GenerationStats stats, Decision lastDecision) {
        this.tokens = tokens;
        this.stopReason = stopReason;
        this.stats = stats;
        this.lastDecision = lastDecision;
    }
}
