package com.mbqonnx.demo;

import com.mbqonnx.core.Decision;
import com.mbqonnx.core.GenerationStats;
import java.util.Locale;

/** The live statistics line under the buttons. */
public final class StatsText {
    private StatsText() {
    }

    /** E.g. {@code "12.5 tok/s · 5.43 bits · τ 0.62 · p50 78 ms · p95 91 ms · tracking"}. */
    public static String format(GenerationStats stats, Decision next, int recentWindow) {
        return String.format(Locale.ROOT, "%s tok/s · %s bits · τ %.2f · p50 %s ms · p95 %s ms · %s",
                num(stats.recentTokensPerSecond(recentWindow), 1), num(stats.averageBits(), 2), next.tau,
                num(stats.p50Ms(), 0), num(stats.p95Ms(), 0), next.status);
    }

    private static String num(double v, int decimals) {
        return Double.isNaN(v) ? "–" : String.format(Locale.ROOT, "%." + decimals + "f", v);
    }
}
