package com.mbqonnx.core;

/** Chooses τ / forced slices before each decode step (spec: docs/controller.md). */
public interface Controller {
    /** The decision to use for the next step. */
    Decision decision();

    /** Accounts for one measured decode-step latency (ms) and returns the next decision. */
    Decision update(double measuredMs);
}
