package com.mbqonnx.core;

import java.util.ArrayDeque;
import java.util.Arrays;

/**
 * Latency-budget controller: feed-forward over the {@link LatencyMap} plus one feedback state,
 * the slowdown ratio (an EMA of measured / map latency). A line-by-line port of
 * {@code mbq_onnx/runtime/controller.py}; both follow docs/controller.md and pass
 * tests/golden/controller_vectors.json.
 */
public final class BudgetController implements Controller {
    private final LatencyMap map;
    private final ControllerParams params;
    private final double targetMs;
    private final double setpointMs;
    private double ratio;
    private double tau;
    private final ArrayDeque<Double> recent = new ArrayDeque<>(); // last `window` observed ratios, oldest first
    private Decision decision;

    /** Creates the controller for a per-token budget of {@code targetMs} milliseconds. */
    public BudgetController(LatencyMap map, double targetMs, ControllerParams params) {
        if (!(Double.isFinite(targetMs) && targetMs > 0.0)) {
            throw new IllegalArgumentException(
                    "latency budget must be a finite number of ms > 0, got " + targetMs);
        }
        if (map == null) {
            throw new IllegalArgumentException("latency map is required for a latency budget");
        }
        this.map = map;
        this.params = params == null ? ControllerParams.defaults() : params;
        this.targetMs = targetMs;
        this.setpointMs = targetMs * (1.0 - this.params.headroom);
        this.ratio = 1.0;
        this.tau = map.tauForLatency(setpointMs / ratio);
        this.decision = decide();
    }

    /** A budget given as tokens per second ({@code target_ms = 1000 / tokensPerSecond}). */
    public static BudgetController forTokensPerSecond(LatencyMap map, double tokensPerSecond,
                                                      ControllerParams params) {
        if (!(Double.isFinite(tokensPerSecond) && tokensPerSecond > 0.0)) {
            throw new IllegalArgumentException(
                    "token-rate budget must be a finite number of tok/s > 0, got " + tokensPerSecond);
        }
        return new BudgetController(map, 1000.0 / tokensPerSecond, params);
    }

    public double targetMs() {
        return targetMs;
    }

    public double setpointMs() {
        return setpointMs;
    }

    public LatencyMap map() {
        return map;
    }

    @Override
    public Decision decision() {
        return decision;
    }

    @Override
    public Decision update(double measuredMs) {
        if (!(Double.isFinite(measuredMs) && measuredMs > 0.0)) {
            throw new IllegalArgumentException("measured latency must be finite and > 0 ms, got " + measuredMs);
        }
        ControllerParams p = params;
        recent.addLast(measuredMs / map.latencyAt(tau));
        if (recent.size() > p.window) {
            recent.removeFirst();
        }
        double observed = median(recent);
        observed = Math.min(Math.max(observed, ratio / p.spikeFactor), ratio * p.spikeFactor);
        double r = ratio + p.gain * (observed - ratio);
        ratio = Math.min(Math.max(r, p.ratioMin), p.ratioMax);
        double predicted = ratio * map.latencyAt(tau);
        if (Math.abs(predicted - setpointMs) > p.band * setpointMs) {
            tau = map.tauForLatency(setpointMs / ratio);
        }
        decision = decide();
        return decision;
    }

    /** Median of k values: sorted s; k odd → s[k/2]; k even → (s[k/2-1] + s[k/2]) / 2. */
    static double median(ArrayDeque<Double> values) {
        double[] s = new double[values.size()];
        int i = 0;
        for (double v : values) {
            s[i++] = v;
        }
        Arrays.sort(s);
        int k = s.length;
        return k % 2 == 1 ? s[k / 2] : (s[k / 2 - 1] + s[k / 2]) / 2.0;
    }

    private Decision decide() {
        double predicted = ratio * map.latencyAt(tau);
        String status;
        if (tau == map.tauMax() && ratio * map.latencyOfPoint(map.size() - 1) > targetMs) {
            status = Decision.INFEASIBLE;
        } else if (tau == map.tauMin() && ratio * map.latencyOfPoint(0) <= setpointMs) {
            status = Decision.MAX_PRECISION;
        } else {
            status = Decision.TRACKING;
        }
        return new Decision(tau, 0, status, ratio, predicted);
    }
}
