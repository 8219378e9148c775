package com.mbqonnx.core;

/**
 * What the user asked for: how many tokens, how to sample, and the precision mode — a latency
 * budget (ms/token, steered by {@link BudgetController}), a fixed τ, or a fixed slice count.
 * Every factory validates its input and says what is wrong.
 */
public final class GenerationSettings {
    /** The precision modes. */
    public enum Mode { BUDGET, FIXED_TAU, FIXED_SLICES }

    public final Mode mode;
    public final double budgetMs;
    public final double tau;
    public final int slices;
    public final int maxNewTokens;
    public final Sampler sampler;

    private GenerationSettings(Mode mode, double budgetMs, double tau, int slices, int maxNewTokens, Sampler sampler) {
        if (maxNewTokens < 1) {
            throw new IllegalArgumentException("max new tokens must be >= 1, got " + maxNewTokens);
        }
        if (sampler == null) {
            throw new IllegalArgumentException("a sampler is required (Sampler.greedy() or Sampler.topK(...))");
        }
        this.mode = mode;
        this.budgetMs = budgetMs;
        this.tau = tau;
        this.slices = slices;
        this.maxNewTokens = maxNewTokens;
        this.sampler = sampler;
    }

    /** Steer τ so each decode step takes about {@code budgetMs} milliseconds. */
    public static GenerationSettings budget(double budgetMs, int maxNewTokens, Sampler sampler) {
        if (!(Double.isFinite(budgetMs) && budgetMs > 0.0)) {
            throw new IllegalArgumentException("latency budget must be a number of ms/token > 0, got " + budgetMs);
        }
        return new GenerationSettings(Mode.BUDGET, budgetMs, Double.NaN, 0, maxNewTokens, sampler);
    }

    /** Keep the router threshold at {@code tau} (in [0, 1]). */
    public static GenerationSettings fixedTau(double tau, int maxNewTokens, Sampler sampler) {
        FixedController.ofTau(tau); // validates
        return new GenerationSettings(Mode.FIXED_TAU, Double.NaN, tau, 0, maxNewTokens, sampler);
    }

    /** Force {@code slices} slices for every linear (1 = base precision). */
    public static GenerationSettings fixedSlices(int slices, int maxNewTokens, Sampler sampler) {
        if (slices < 1) {
            throw new IllegalArgumentException("slice count must be >= 1, got " + slices);
        }
        return new GenerationSettings(Mode.FIXED_SLICES, Double.NaN, Double.NaN, slices, maxNewTokens, sampler);
    }

    /**
     * The controller for this mode. A budget needs the device's latency {@code map} (from the
     * probe); fixed modes ignore it.
     */
    public Controller newController(LatencyMap map, ControllerParams params, int numSlices) {
        switch (mode) {
            case BUDGET:
                if (map == null) {
                    throw new IllegalArgumentException("a latency budget needs the τ → latency map; run the probe first");
                }
                return new BudgetController(map, budgetMs, params);
            case FIXED_TAU:
                return FixedController.ofTau(tau);
            default:
                return FixedController.ofSlices(slices, numSlices);
        }
    }
}
