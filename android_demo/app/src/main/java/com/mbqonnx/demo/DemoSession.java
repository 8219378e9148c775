package com.mbqonnx.demo;

import ai.onnxruntime.OrtEnvironment;
import com.mbqonnx.core.ControllerParams;
import com.mbqonnx.core.Decision;
import com.mbqonnx.core.GenerationResult;
import com.mbqonnx.core.GenerationSettings;
import com.mbqonnx.core.GenerationStats;
import com.mbqonnx.core.Generator;
import com.mbqonnx.core.IncrementalDecoder;
import com.mbqonnx.core.LatencyMap;
import com.mbqonnx.core.LatencyProbe;
import com.mbqonnx.core.MapPoint;
import com.mbqonnx.core.MapStore;
import com.mbqonnx.core.ModelConfig;
import com.mbqonnx.core.ModelException;
import com.mbqonnx.core.ModelFiles;
import com.mbqonnx.core.OrtDecoderModel;
import com.mbqonnx.core.OrtxTokenizer;
import com.mbqonnx.core.Sampler;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Everything the screen does, without Android classes: load a model folder (model, config,
 * tokenizer models), probe or load the device's τ → latency map, and generate on a worker thread
 * under a live latency budget. The activity supplies paths and forwards {@link Callback}s to the UI.
 */
public final class DemoSession implements AutoCloseable {
    /** The probe prompt of mbq_onnx.runtime.probe (same text, same procedure). */
    public static final String PROBE_TEXT = "The committee met on Tuesday to review the annual budget. After a long "
            + "discussion about schools, roads and the new hospital, the members agreed to";
    private static final int RECENT_WINDOW = 8;

    /** UI hooks, called on the worker thread. */
    public interface Callback {
        void onStatus(String message);

        void onText(String delta);

        void onStep(GenerationStats stats, Decision next, double budgetMs, String statsLine);

        void onDone(GenerationResult result);

        void onError(String message);
    }

    private final String opsLibrary;
    private final String extensionsLibrary;
    private final File cacheDir;
    private final String deviceName;
    private final int threads;
    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final AtomicBoolean stop = new AtomicBoolean();
    private final ChartSeries chart = new ChartSeries(64);
    private OrtDecoderModel model;
    private OrtxTokenizer tokenizer;
    private ModelConfig config;
    private LatencyMap map;
    private volatile LiveBudgetController live;

    /**
     * @param opsLibrary        absolute path of libmbq_ops.so (the APK's native library dir)
     * @param extensionsLibrary onnxruntime-extensions' library ({@code OrtxPackage.getLibraryPath()})
     * @param cacheDir          where probed latency maps are kept
     * @param deviceName        part of the map's cache key (e.g. {@code Build.MODEL})
     * @param threads           ORT intra-op threads (0 = ORT's default)
     */
    public DemoSession(String opsLibrary, String extensionsLibrary, File cacheDir, String deviceName, int threads) {
        this.opsLibrary = opsLibrary;
        this.extensionsLibrary = extensionsLibrary;
        this.cacheDir = cacheDir;
        this.deviceName = deviceName;
        this.threads = threads;
    }

    public ChartSeries chart() {
        return chart;
    }

    /** Loads {@code modelDir} on the worker thread; reports progress and errors through {@code cb}. */
    public void load(File modelDir, Callback cb) {
        worker.execute(() -> {
            try {
                closeModel();
                ModelFiles files = ModelFiles.locate(modelDir);
                cb.onStatus("Loading " + files.model.getName() + " …");
                config = ModelConfig.load(files.config);
                OrtEnvironment env = OrtEnvironment.getEnvironment();
                model = new OrtDecoderModel(env, files.model, opsLibrary, config, threads);
                tokenizer = new OrtxTokenizer(env, files.tokenizer, files.detokenizer, extensionsLibrary);
                String key = mapKey(files, env.getVersion());
                File cached = new File(cacheDir, "probe/" + key + ".json");
                List<MapPoint> points = MapStore.load(cached, key);
                if (points == null) {
                    cb.onStatus("Measuring τ → latency on this device (once per model) …");
                    points = new LatencyProbe(model, config, System::nanoTime, 4).measure(tokenizer.encode(PROBE_TEXT));
                    MapStore.save(cached, key, points);
                }
                map = new LatencyMap(points);
                cb.onStatus(String.format(java.util.Locale.ROOT, "%s · %d slices · %.1f–%.1f ms/token (τ 0–1)",
                        modelDir.getName(), config.numSlices(), map.latencyAt(map.tauMax()), map.latencyAt(map.tauMin())));
            } catch (ModelException | IOException | RuntimeException e) {
                cb.onError(e.getMessage());
            }
        });
    }

    /** True once a model and its latency map are ready. */
    public boolean isReady() {
        return map != null;
    }

    /** The map's fastest and slowest step latency (ms), for the slider range. */
    public double[] latencyRange() {
        return new double[] {map.latencyAt(map.tauMax()), map.latencyAt(map.tauMin())};
    }

    /** Starts generating; {@code budgetMs} ≤ 0 or an empty prompt is reported through {@code onError}. */
    public void generate(String prompt, double budgetMs, int maxNewTokens, Callback cb) {
        stop.set(false);
        worker.execute(() -> {
            try {
                if (map == null) {
                    throw new ModelException("no model loaded: push one with adb or pick a folder first");
                }
                GenerationSettings settings = GenerationSettings.budget(budgetMs, maxNewTokens, Sampler.greedy());
                LiveBudgetController controller = new LiveBudgetController(map, settings.budgetMs, ControllerParams.defaults());
                live = controller;
                chart.clear();
                long[] ids = tokenizer.encode(prompt);
                IncrementalDecoder text = new IncrementalDecoder(tokenizer);
                Generator generator = new Generator(model, config, config.eosTokenIds());
                double[] lastBudget = {controller.budgetMs()};
                GenerationResult result = generator.generate(ids, settings, controller,
                        (token, index, used, next, stats) -> {
                            try {
                                cb.onText(text.push(token));
                            } catch (ModelException e) {
                                cb.onError(e.getMessage());
                            }
                            if (index > 0) {
                                double[] lat = stats.latencies();
                                chart.add(lat[lat.length - 1], lastBudget[0]);
                            }
                            lastBudget[0] = controller.budgetMs();
                            cb.onStep(stats, next, lastBudget[0], StatsText.format(stats, next, RECENT_WINDOW));
                        }, stop::get);
                cb.onDone(result);
            } catch (ModelException | RuntimeException e) {
                cb.onError(e.getMessage());
            } finally {
                live = null;
            }
        });
    }

    /** Moves the budget of the running generation (no effect when idle). */
    public void setBudgetMs(double budgetMs) {
        LiveBudgetController c = live;
        if (c != null) {
            c.setBudgetMs(budgetMs);
        }
    }

    /** Asks the running generation to stop after the current step. */
    public void stop() {
        stop.set(true);
    }

    private String mapKey(ModelFiles files, String ortVersion) throws IOException {
        try {
            MessageDigest sha = MessageDigest.getInstance("SHA-256");
            for (String part : new String[] {"probe-v1", String.valueOf(files.model.length()),
                    new String(Files.readAllBytes(files.config.toPath()), StandardCharsets.UTF_8),
                    "threads=" + threads, System.getProperty("os.arch", ""), deviceName, ortVersion}) {
                sha.update(part.getBytes(StandardCharsets.UTF_8));
                sha.update((byte) 0);
            }
            StringBuilder hex = new StringBuilder();
            for (byte b : sha.digest()) {
                hex.append(String.format("%02x", b));
            }
            return hex.substring(0, 32);
        } catch (NoSuchAlgorithmException e) {
            throw new IOException("SHA-256 unavailable", e);
        }
    }

    private void closeModel() {
        if (model != null) {
            model.close();
            model = null;
        }
        if (tokenizer != null) {
            tokenizer.close();
            tokenizer = null;
        }
        map = null;
    }

    @Override
    public void close() {
        stop.set(true);
        worker.execute(this::closeModel);
        worker.shutdown();
    }
}
