package com.mbqonnx.core;

import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;
import java.util.function.BooleanSupplier;
import java.util.function.LongSupplier;

/**
 * The decode loop: prefill the prompt, then one token per step, with the controller choosing
 * τ / forced slices before every step and the measured step latency fed back after it.
 *
 * <p>The same loop as {@code mbq_onnx.runtime.generate}: the prompt is prefilled at the
 * controller's first decision; a decode step's time is the model call plus the token choice;
 * a stop token ends generation and is not part of the output. The clock is injectable so the
 * loop can be tested against a model call recorded from the Python runtime.
 */
public final class Generator {
    private final DecoderModel model;
    private final ModelConfig config;
    private final LongSupplier nanoClock;
    private final Set<Long> stopTokens;

    /**
     * @param stopTokenIds ids that end generation (e.g. the tokenizer's EOS); may be empty
     * @param nanoClock    monotonic clock in ns ({@code System::nanoTime} on a device)
     */
    public Generator(DecoderModel model, ModelConfig config, long[] stopTokenIds, LongSupplier nanoClock) {
        if (model == null || config == null || nanoClock == null) {
            throw new IllegalArgumentException("model, config and clock are required");
        }
        this.model = model;
        this.config = config;
        this.nanoClock = nanoClock;
        this.stopTokens = new HashSet<>();
        for (long id : stopTokenIds == null ? new long[0] : stopTokenIds) {
            stopTokens.add(id);
        }
    }

    /** A generator timed with {@link System#nanoTime()}. */
    public Generator(DecoderModel model, ModelConfig config, long[] stopTokenIds) {
        this(model, config, stopTokenIds, System::nanoTime);
    }

    /**
     * Generates up to {@code settings.maxNewTokens} tokens after {@code promptIds}.
     *
     * @param stopRequested polled before every step (the UI's Stop button); may be null
     * @param listener      told about every token; may be null
     */
    public GenerationResult generate(long[] promptIds, GenerationSettings settings, Controller controller,
                                     GenerationListener listener, BooleanSupplier stopRequested)
            throws ModelException {
        if (promptIds == null || promptIds.length == 0) {
            throw new IllegalArgumentException("the prompt is empty: type some text first");
        }
        if (settings == null || controller == null) {
            throw new IllegalArgumentException("settings and controller are required");
        }
        double budgetMs = controller instanceof BudgetController ? ((BudgetController) controller).targetMs() : Double.NaN;
        GenerationStats stats = new GenerationStats();
        long[] out = new long[settings.maxNewTokens];
        int n = 0;
        model.reset();

        Decision used = controller.decision();
        long t0 = nanoClock.getAsLong();
        StepOutput step = model.step(promptIds, (float) used.tau, used.forceSlices);
        stats.recordPrefill(promptIds.length, (nanoClock.getAsLong() - t0) / 1e6);
        long next = settings.sampler.sample(step.logits);
        String reason = GenerationResult.STOP_MAX_TOKENS;
        for (int i = 0; i < settings.maxNewTokens; i++) {
            if (stopTokens.contains(next)) {
                reason = GenerationResult.STOP_TOKEN;
                break;
            }
            out[n++] = next;
            if (listener != null) {
                listener.onToken((int) next, i, used, controller.decision(), stats);
            }
            if (i == settings.maxNewTokens - 1) {
                break;
            }
            if (stopRequested != null && stopRequested.getAsBoolean()) {
                reason = GenerationResult.STOP_REQUESTED;
                break;
            }
            used = controller.decision();
            t0 = nanoClock.getAsLong();
            step = model.step(new long[] {next}, (float) used.tau, used.forceSlices);
            next = settings.sampler.sample(step.logits);
            double ms = (nanoClock.getAsLong() - t0) / 1e6;
            double bits = step.sliceCounts.length == 0 ? Double.NaN : config.averageBits(step.sliceCounts);
            stats.recordStep(ms, used.tau, budgetMs, bits);
            controller.update(Math.max(ms, 1e-6)); // a coarse clock may read 0; the controller needs > 0
        }
        return new GenerationResult(Arrays.copyOf(out, n), reason, stats, controller.decision());
    }
}
