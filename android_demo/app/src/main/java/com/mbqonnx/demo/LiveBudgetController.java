package com.mbqonnx.demo;

import com.mbqonnx.core.BudgetController;
import com.mbqonnx.core.Controller;
import com.mbqonnx.core.ControllerParams;
import com.mbqonnx.core.Decision;
import com.mbqonnx.core.LatencyMap;

/**
 * A {@link BudgetController} whose budget the slider can move while tokens are generated: a new
 * budget starts a fresh controller (docs/controller.md construction) before the next step.
 */
public final class LiveBudgetController implements Controller {
    private final LatencyMap map;
    private final ControllerParams params;
    private volatile double pendingMs;
    private BudgetController current;

    public LiveBudgetController(LatencyMap map, double budgetMs, ControllerParams params) {
        this.map = map;
        this.params = params;
        this.current = new BudgetController(map, budgetMs, params); // validates the budget
        this.pendingMs = budgetMs;
    }

    /** Called from the UI thread; takes effect at the next decision. */
    public void setBudgetMs(double budgetMs) {
        if (!(Double.isFinite(budgetMs) && budgetMs > 0.0)) {
            throw new IllegalArgumentException("latency budget must be a number of ms/token > 0, got " + budgetMs);
        }
        pendingMs = budgetMs;
    }

    /** The budget the current decisions aim for. */
    public synchronized double budgetMs() {
        return current.targetMs();
    }

    private void swapIfChanged() {
        double want = pendingMs;
        if (want != current.targetMs()) {
            current = new BudgetController(map, want, params);
        }
    }

    @Override
    public synchronized Decision decision() {
        swapIfChanged();
        return current.decision();
    }

    @Override
    public synchronized Decision update(double measuredMs) {
        current.update(measuredMs);
        return decision();
    }
}
