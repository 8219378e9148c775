package com.mbqonnx.demo;

import android.content.Context;
import android.graphics.Canvas;
import android.graphics.Color;
import android.graphics.Paint;
import android.graphics.Path;
import android.util.AttributeSet;
import android.view.View;
import java.util.Locale;

/** Step latency (blue) against the budget (grey, dashed by steps) for the last decode steps. */
public final class LatencyChartView extends View {
    private final Paint latencyPaint = new Paint(Paint.ANTI_ALIAS_FLAG);
    private final Paint budgetPaint = new Paint(Paint.ANTI_ALIAS_FLAG);
    private final Paint axisPaint = new Paint(Paint.ANTI_ALIAS_FLAG);
    private final Path path = new Path();
    private ChartSeries series;

    public LatencyChartView(Context context, AttributeSet attrs) {
        super(context, attrs);
        float density = getResources().getDisplayMetrics().density;
        latencyPaint.setColor(Color.rgb(33, 102, 172));
        latencyPaint.setStyle(Paint.Style.STROKE);
        latencyPaint.setStrokeWidth(2 * density);
        budgetPaint.setColor(Color.GRAY);
        budgetPaint.setStyle(Paint.Style.STROKE);
        budgetPaint.setStrokeWidth(1.5f * density);
        axisPaint.setColor(Color.DKGRAY);
        axisPaint.setTextSize(11 * density);
    }

    /** The data to draw; call {@link #postInvalidate()} after it changes. */
    public void setSeries(ChartSeries series) {
        this.series = series;
        invalidate();
    }

    @Override
    protected void onDraw(Canvas canvas) {
        super.onDraw(canvas);
        if (series == null) {
            return;
        }
        double[][] data = series.snapshot();
        double top = ChartSeries.axisMax(data);
        float left = axisPaint.getTextSize() * 3;
        float w = getWidth() - left;
        float h = getHeight() - axisPaint.getTextSize();
        canvas.drawLine(left, 0, left, h, axisPaint);
        canvas.drawLine(left, h, getWidth(), h, axisPaint);
        canvas.drawText(String.format(Locale.ROOT, "%.0f ms", top), 0, axisPaint.getTextSize(), axisPaint);
        canvas.drawText("0", 0, h, axisPaint);
        int n = data[0].length;
        float dx = w / Math.max(1, series.capacity() - 1);
        for (int row = 1; row >= 0; row--) {
            path.reset();
            for (int i = 0; i < n; i++) {
                float x = left + i * dx;
                float y = (float) (h - Math.min(data[row][i], top) / top * h);
                if (i == 0) {
                    path.moveTo(x, y);
                } else {
                    path.lineTo(x, y);
                }
            }
            canvas.drawPath(path, row == 0 ? latencyPaint : budgetPaint);
        }
    }
}
