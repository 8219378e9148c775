package com.mbqonnx.demo;

import ai.onnxruntime.extensions.OrtxPackage;
import android.app.Activity;
import android.content.ContentResolver;
import android.content.Intent;
import android.database.Cursor;
import android.net.Uri;
import android.os.Build;
import android.os.Bundle;
import android.provider.DocumentsContract;
import android.widget.Button;
import android.widget.EditText;
import android.widget.SeekBar;
import android.widget.TextView;
import com.mbqonnx.core.Decision;
import com.mbqonnx.core.GenerationResult;
import com.mbqonnx.core.GenerationStats;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.Locale;

/**
 * One screen: model status, prompt, budget slider (ms/token), Generate/Stop, live stats (tok/s,
 * average bits, τ, p50/p95, controller status), a latency-vs-budget chart and the output text.
 *
 * <p>The model folder is {@code <external files dir>/model} (push it with adb, see README) or a
 * folder picked from storage, which is copied into the app's files dir (ORT needs file paths).
 */
public final class MainActivity extends Activity {
    private static final int PICK_FOLDER = 1;
    private static final int MIN_BUDGET_MS = 5;
    private static final int MAX_BUDGET_MS = 500;
    private static final int MAX_NEW_TOKENS = 128;

    private DemoSession session;
    private TextView modelStatus;
    private TextView budgetLabel;
    private TextView statsView;
    private TextView output;
    private SeekBar budget;
    private Button generate;
    private Button stop;
    private LatencyChartView chart;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        setContentView(R.layout.activity_main);
        modelStatus = findViewById(R.id.model_status);
        budgetLabel = findViewById(R.id.budget_label);
        statsView = findViewById(R.id.stats);
        output = findViewById(R.id.output);
        budget = findViewById(R.id.budget);
        generate = findViewById(R.id.generate);
        stop = findViewById(R.id.stop);
        chart = findViewById(R.id.chart);
        EditText prompt = findViewById(R.id.prompt);

        String opsLibrary = new File(getApplicationInfo().nativeLibraryDir, "libmbq_ops.so").getAbsolutePath();
        session = new DemoSession(opsLibrary, OrtxPackage.getLibraryPath(), getFilesDir(), Build.MODEL,
                Math.min(4, Runtime.getRuntime().availableProcessors()));
        chart.setSeries(session.chart());

        budget.setMax(MAX_BUDGET_MS - MIN_BUDGET_MS);
        budget.setProgress(100 - MIN_BUDGET_MS);
        showBudget();
        budget.setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
            @Override
            public void onProgressChanged(SeekBar bar, int progress, boolean fromUser) {
                showBudget();
                session.setBudgetMs(budgetMs());
            }

            @Override
            public void onStartTrackingTouch(SeekBar bar) {
            }

            @Override
            public void onStopTrackingTouch(SeekBar bar) {
            }
        });
        generate.setOnClickListener(v -> {
            output.setText(prompt.getText());
            generate.setEnabled(false);
            stop.setEnabled(true);
            session.generate(prompt.getText().toString(), budgetMs(), MAX_NEW_TOKENS, callback);
        });
        stop.setOnClickListener(v -> session.stop());
        findViewById(R.id.pick_model).setOnClickListener(v ->
                startActivityForResult(new Intent(Intent.ACTION_OPEN_DOCUMENT_TREE), PICK_FOLDER));

        File pushed = new File(getExternalFilesDir(null), "model");
        if (pushed.isDirectory()) {
            session.load(pushed, callback);
        }
    }

    private double budgetMs() {
        return MIN_BUDGET_MS + budget.getProgress();
    }

    private void showBudget() {
        budgetLabel.setText(getString(R.string.budget_label, budgetMs()));
    }

    private final DemoSession.Callback callback = new DemoSession.Callback() {
        @Override
        public void onStatus(String message) {
            runOnUiThread(() -> modelStatus.setText(message));
        }

        @Override
        public void onText(String delta) {
            runOnUiThread(() -> output.append(delta));
        }

        @Override
        public void onStep(GenerationStats stats, Decision next, double budgetMs, String line) {
            runOnUiThread(() -> {
                statsView.setText(line);
                chart.invalidate();
            });
        }

        @Override
        public void onDone(GenerationResult result) {
            runOnUiThread(() -> {
                generate.setEnabled(true);
                stop.setEnabled(false);
                GenerationStats s = result.stats;
                statsView.append(String.format(Locale.ROOT, "\n%d tokens, %s; prefill %.0f ms, mean %.1f tok/s, %.2f bits",
                        result.tokens.length, result.stopReason, s.prefillMs(), s.tokensPerSecond(), s.averageBits()));
            });
        }

        @Override
        public void onError(String message) {
            runOnUiThread(() -> {
                generate.setEnabled(true);
                stop.setEnabled(false);
                modelStatus.setText(message);
            });
        }
    };

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        super.onActivityResult(request, result, data);
        if (request != PICK_FOLDER || result != RESULT_OK || data == null || data.getData() == null) {
            return;
        }
        Uri tree = data.getData();
        modelStatus.setText("Copying model folder …");
        new Thread(() -> {
            try {
                File dest = copyTree(tree, new File(getFilesDir(), "models/picked"));
                session.load(dest, callback);
            } catch (IOException e) {
                callback.onError("cannot copy the picked folder: " + e.getMessage());
            }
        }).start();
    }

    /** Copies the files (not subfolders) of a picked document tree into {@code dest}. */
    private File copyTree(Uri tree, File dest) throws IOException {
        if (!dest.isDirectory() && !dest.mkdirs()) {
            throw new IOException("cannot create " + dest);
        }
        ContentResolver resolver = getContentResolver();
        String rootId = DocumentsContract.getTreeDocumentId(tree);
        Uri children = DocumentsContract.buildChildDocumentsUriUsingTree(tree, rootId);
        String[] columns = {DocumentsContract.Document.COLUMN_DOCUMENT_ID, DocumentsContract.Document.COLUMN_DISPLAY_NAME,
                DocumentsContract.Document.COLUMN_MIME_TYPE};
        try (Cursor c = resolver.query(children, columns, null, null, null)) {
            while (c != null && c.moveToNext()) {
                if (DocumentsContract.Document.MIME_TYPE_DIR.equals(c.getString(2))) {
                    continue;
                }
                Uri doc = DocumentsContract.buildDocumentUriUsingTree(tree, c.getString(0));
                File out = new File(dest, new File(c.getString(1)).getName());
                File tmp = new File(dest, out.getName() + ".part");
                try (InputStream in = resolver.openInputStream(doc); OutputStream os = new FileOutputStream(tmp)) {
                    byte[] buf = new byte[1 << 16];
                    for (int r; (r = in.read(buf)) > 0; ) {
                        os.write(buf, 0, r);
                    }
                }
                if (!tmp.renameTo(out)) {
                    throw new IOException("cannot rename " + tmp + " to " + out);
                }
            }
        }
        return dest;
    }

    @Override
    protected void onDestroy() {
        session.close();
        super.onDestroy();
    }
}
