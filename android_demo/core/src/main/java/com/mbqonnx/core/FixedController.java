package com.mbqonnx.core;

/** Fixed modes: a constant τ (the router decides) or a forced slice count (router bypassed). */
public final class FixedController implements Controller {
    private final Decision decision;

    private FixedController(Decision decision) {
        this.decision = decision;
    }

    /** A constant router threshold τ in [0, 1]. */
    public static FixedController ofTau(double tau) {
        if (!(Double.isFinite(tau) && tau >= 0.0 && tau <= 1.0)) {
            throw new IllegalArgumentException("τ must be a number in [0, 1], got " + tau);
        }
        return new FixedController(new Decision(tau, 0, Decision.FIXED, 1.0, Double.NaN));
    }

    /** A forced slice count in 1..numSlices (1 = base precision only). */
    public static FixedController ofSlices(int slices, int numSlices) {
        if (slices < 1 || slices > numSlices) {
            throw new IllegalArgumentException("slice count must be in 1.." + numSlices + ", got " + slices);
        }
        return new FixedController(new Decision(0.0, slices, Decision.FIXED, 1.0, Double.NaN));
    }

    @Override
    public Decision decision() {
        return decision;
    }

    /** Fixed modes ignore measurements. */
    @Override
    public Decision update(double measuredMs) {
        return decision;
    }
}
