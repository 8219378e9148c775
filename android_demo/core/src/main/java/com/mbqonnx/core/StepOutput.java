package com.mbqonnx.core;

/** What one model step returns: the last position's logits and the per-linear slice counts. */
public final class StepOutput {
    /** Logits of the last input position, length = vocabulary size. */
    public final float[] logits;
    /**
     * Graph output {@code slice_counts} for the last input position, one entry per routed linear
     * (or block); empty for a model without routing.
     */
    public final long[] sliceCounts;

    public StepOutput(float[] logits, long[] sliceCounts) {
        if (logits == null || logits.length == 0) {
            throw new IllegalArgumentException("a model step must return non-empty logits");
        }
        this.logits = logits;
        this.sliceCounts = sliceCounts == null ? new long[0] : sliceCounts;
    }
}
