package com.mbqonnx.demo;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.mbqonnx.core.BudgetController;
import com.mbqonnx.core.ControllerParams;
import com.mbqonnx.core.Decision;
import com.mbqonnx.core.GenerationStats;
import com.mbqonnx.core.LatencyMap;
import com.mbqonnx.core.MapPoint;
import java.util.Arrays;
import org.junit.Test;

/** The app's Android-free logic: live budget changes, the chart buffer, the stats line. */
public class AppLogicTest {
    private static LatencyMap map() {
        return new LatencyMap(Arrays.asList(new MapPoint(0.0, 8.0, 20.0), new MapPoint(0.5, 6.0, 15.0),
                new MapPoint(1.0, 4.0, 10.0)));
    }

    @Test
    public void movingTheSliderStartsAFreshControllerAtTheNextStep() {
        ControllerParams p = ControllerParams.defaults();
        LiveBudgetController live = new LiveBudgetController(map(), 15.0, p);
        BudgetController same = new BudgetController(map(), 15.0, p);
        for (double m : new double[] {16.0, 17.0, 15.5}) {
            Decision a = live.update(m);
            Decision b = same.update(m);
            assertEquals(b.tau, a.tau, 0.0);
            assertEquals(b.ratio, a.ratio, 0.0);
        }
        live.setBudgetMs(11.0);
        Decision moved = live.decision();
        Decision fresh = new BudgetController(map(), 11.0, p).decision();
        assertEquals(fresh.tau, moved.tau, 0.0);
        assertEquals(11.0, live.budgetMs(), 0.0);
        assertTrue("a tighter budget must not lower τ", moved.tau >= same.decision().tau);
    }

    @Test(expected = IllegalArgumentException.class)
    public void sliderRejectsANonPositiveBudget() {
        new LiveBudgetController(map(), 15.0, null).setBudgetMs(0.0);
    }

    @Test
    public void chartKeepsTheLastStepsInOrder() {
        ChartSeries c = new ChartSeries(3);
        for (int i = 1; i <= 5; i++) {
            c.add(i, 10.0 * i);
        }
        double[][] s = c.snapshot();
        assertArrayEquals(new double[] {3, 4, 5}, s[0], 0.0);
        assertArrayEquals(new double[] {30, 40, 50}, s[1], 0.0);
        double top = ChartSeries.axisMax(s);
        assertTrue(top >= 50 * 1.25 && top <= 100);
        c.clear();
        assertEquals(0, c.snapshot()[0].length);
    }

    @Test
    public void statsLineShowsDashesBeforeTheFirstStep() {
        String line = StatsText.format(new GenerationStats(), new Decision(0.25, 0, "tracking", 1.0, 14.0), 8);
        assertTrue(line, line.startsWith("– tok/s · – bits · τ 0.25"));
        assertTrue(line, line.endsWith("tracking"));
    }
}
