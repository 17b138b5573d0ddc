package wellspring.peers;

import java.io.File;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;
import java.util.function.Consumer;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.ExecutionOptions;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.configuration.RestartStrategyOptions;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.runtime.util.EnvironmentInformation;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/**
 * What both Flink peers share: the plate layout, the lab's input (built before any timer
 * starts), the local environment, the count check and the result line.
 *
 * <p>The input is a lab's: {@code experiments} experiments (EXP-LAB-0, EXP-LAB-1, ...)
 * sharing {@code --plates} equally, every image of all of them shuffled together, 1% of
 * the images once more, and the experiments' layouts in the same stream: the first ones
 * before any image, the last {@code late} ones only halfway through, so that those
 * experiments' aggregates cannot complete before then.
 */
final class Workload {
    static final String CELL_TYPE = "HUVEC";
    static final int SITES = 4;
    static final int CHANNELS = 6;
    /** The machine's cores: one subtask of every operator per core. */
    static final int PARALLELISM = 2;
    /** The interior of a 384-well plate (rows B-O, columns 02-23), as Wellspring's synthetic layout. */
    static final String[] WELLS = new String[308];

    static {
        int i = 0;
        for (char row = 'B'; row <= 'O'; row++) {
            for (int col = 2; col <= 23; col++) {
                WELLS[i++] = String.format("%c%02d", row, col);
            }
        }
    }

    /** The well's index in WELLS, or -1 if it is not "letter digit digit" within the layout. */
    static int wellIndex(String well) {
        if (well == null || well.length() != 3) return -1;
        char row = well.charAt(0), tens = well.charAt(1), ones = well.charAt(2);
        if (row < 'B' || row > 'O' || tens < '0' || tens > '9' || ones < '0' || ones > '9') return -1;
        int col = (tens - '0') * 10 + (ones - '0');
        return col < 2 || col > 23 ? -1 : (row - 'B') * 22 + (col - 2);
    }

    static String experiment(int e) {
        return "EXP-LAB-" + e;
    }

    /** As Wellspring's synthetic layout names its plates: EXP-LAB-0-P0007. */
    static String barcode(String experiment, int plate) {
        return experiment + "-P" + String.valueOf(10000 + plate).substring(1);
    }

    /**
     * An experiment's layout, what the aggregates' sizes come from: its plates (numbered
     * from 1), the wells of each (the standard 308), sites per well, channels per site.
     */
    public static final class Layout {
        public String experiment = "";
        public int plates, wells, sites, channels;

        public Layout() {}

        Layout(String experiment, int plates) {
            this.experiment = experiment;
            this.plates = plates;
            this.wells = WELLS.length;
            this.sites = SITES;
            this.channels = CHANNELS;
        }

        @Override
        public String toString() {
            return experiment + " (" + plates + " plates of " + wells + " wells, " + sites + " sites, " + channels + " channels)";
        }
    }

    /** Outputs per level (site, well, plate, experiment), counted by the sinks. */
    static final LongAdder[] EMITTED = {new LongAdder(), new LongAdder(), new LongAdder(), new LongAdder()};
    /** Input lines that failed validation: none of the generated ones may. */
    static final LongAdder REJECTED = new LongAdder();
    /** Sites completed only when their experiment's layout arrived (they waited for it). */
    static final LongAdder RELEASED = new LongAdder();
    /** The highest checkpoint the job's operators were told is complete. */
    static final AtomicLong CHECKPOINTS = new AtomicLong();

    final int plates;
    final int experiments;
    final int late;
    final int runs;
    /** End to end only: false to measure the same job without checkpoints (what they cost). */
    final boolean checkpoints;

    /** {@code experiments} experiments share the plates, the last {@code late} of them have their layout halfway. */
    Workload(String[] args, int experiments, int late, int defaultPlates) {
        int plates = defaultPlates, runs = 2;
        boolean checkpoints = true;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--plates" -> plates = Integer.parseInt(args[++i]);
                case "--runs" -> runs = Integer.parseInt(args[++i]);
                case "--no-checkpoints" -> checkpoints = false;
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (plates < experiments || plates % experiments != 0 || plates / experiments > 9999) {
            throw new IllegalArgumentException("--plates must be a multiple of " + experiments + " (the workload's "
                    + experiments + " experiments share the plates equally, at most 9999 each), not " + plates);
        }
        if (runs < 1) throw new IllegalArgumentException("--runs must be positive");
        this.plates = plates;
        this.experiments = experiments;
        this.late = late;
        this.runs = runs;
        this.checkpoints = checkpoints;
    }

    int platesEach() {
        return plates / experiments;
    }

    interface Image<T> {
        T make(String experiment, int plate, String well, int site, int channel);
    }

    /** One xorshift step, as Wellspring's aggregation bench takes them. */
    private long state = 0x9e3779b97f4a7c15L;

    private int next(int bound) {
        state ^= state << 13;
        state ^= state >>> 7;
        state ^= state << 17;
        return (int) Long.remainderUnsigned(state, bound);
    }

    /**
     * The events in arrival order: images (T) and layouts. Every channel image of every
     * experiment once, in imaging order (experiment, plate, well, site, channel); then 1%
     * of them again: with {@code repeatsPerExperiment} 1% of each experiment's (as
     * Wellspring's engine bench, whose lab workload repeats 1% of each experiment's), else
     * 1% of all drawn from all (as its aggregation bench); then all shuffled as a whole
     * with a seeded xorshift (the aggregation bench's: with the same images in the same
     * order, the same arrival order as there). The layouts of all but the last {@code late}
     * experiments come first, those of the late ones just before the image at half the
     * stream (images.size() / 2).
     */
    <T> List<Object> input(Image<T> image, boolean repeatsPerExperiment) {
        int each = platesEach() * WELLS.length * SITES * CHANNELS;
        List<Object> images = new ArrayList<>(experiments * each * 101 / 100 + experiments);
        for (int e = 0; e < experiments; e++) {
            String experiment = experiment(e);
            for (int plate = 1; plate <= platesEach(); plate++) {
                for (String well : WELLS) {
                    for (int site = 1; site <= SITES; site++) {
                        for (int channel = 1; channel <= CHANNELS; channel++) {
                            images.add(image.make(experiment, plate, well, site, channel));
                        }
                    }
                }
            }
        }
        int distinct = images.size();
        if (repeatsPerExperiment) {
            for (int e = 0; e < experiments; e++) {
                for (int i = 0; i < each / 100; i++) images.add(images.get(e * each + next(each)));
            }
        } else {
            for (int i = 0; i < distinct / 100; i++) images.add(images.get(next(distinct)));
        }
        for (int i = images.size() - 1; i > 0; i--) {
            Collections.swap(images, i, next(i + 1));
        }
        List<Object> events = new ArrayList<>(images.size() + experiments);
        for (int e = 0; e < experiments - late; e++) events.add(new Layout(experiment(e), platesEach()));
        int half = images.size() / 2;
        events.addAll(images.subList(0, half));
        for (int e = experiments - late; e < experiments; e++) events.add(new Layout(experiment(e), platesEach()));
        events.addAll(images.subList(half, images.size()));
        return events;
    }

    /**
     * Where the source's i-th number reads the input: the source (a number sequence of
     * the input's length) hands each of its 2 subtasks one half of the numbers; this
     * sends the first half to the even positions and the second to the odd ones, so that
     * both subtasks go through the input from its start to its end side by side, and
     * what is halfway in the input arrives about halfway through the run.
     */
    static int position(long i, int length) {
        long half = (length + 1) / 2;
        return (int) (i < half ? 2 * i : 2 * (i - half) + 1);
    }

    /**
     * A local environment (a MiniCluster in this JVM) with the heap state backend, no
     * restarts (a failure must fail the run, not replay into the counters) and no Kryo
     * fallback (every type has a Flink serializer; a slow generic one would be a mistake).
     * With a checkpoint directory: exactly-once checkpoints every second to it.
     */
    static StreamExecutionEnvironment environment(File checkpoints) {
        Configuration conf = new Configuration();
        conf.set(StateBackendOptions.STATE_BACKEND, "hashmap");
        conf.set(ExecutionOptions.RUNTIME_MODE, RuntimeExecutionMode.STREAMING);
        conf.set(RestartStrategyOptions.RESTART_STRATEGY, "none");
        conf.set(PipelineOptions.GENERIC_TYPES, false);
        if (checkpoints != null) {
            conf.set(CheckpointingOptions.CHECKPOINTING_INTERVAL, Duration.ofSeconds(1));
            conf.set(CheckpointingOptions.CHECKPOINTING_CONSISTENCY_MODE, CheckpointingMode.EXACTLY_ONCE);
            conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
            conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, checkpoints.toURI().toString());
        }
        return StreamExecutionEnvironment.createLocalEnvironment(PARALLELISM, conf);
    }

    /** Counts what reaches it; a JVM-wide counter works because every subtask runs in this JVM. */
    static final class CountingSink<T> implements Sink<T> {
        private final int level;

        CountingSink(int level) {
            this.level = level;
        }

        @Override
        public SinkWriter<T> createWriter(WriterInitContext context) {
            LongAdder counter = EMITTED[level];
            return new SinkWriter<>() {
                @Override
                public void write(T value, Context context) {
                    counter.increment();
                }

                @Override
                public void flush(boolean endOfInput) {}

                @Override
                public void close() {}
            };
        }
    }

    /**
     * Runs the job `runs` times in this JVM (the first run also pays for class loading and
     * JIT compilation), checks every run's outputs and prints the best run's result line.
     * The time is the job's net runtime as Flink's JobManager records it: from the job's
     * start to its end, without the MiniCluster's own start and stop.
     */
    void measure(String peer, String note, int events, File checkpoints, Consumer<StreamExecutionEnvironment> job)
            throws Exception {
        long[] expected = {(long) plates * WELLS.length * SITES, (long) plates * WELLS.length, plates, experiments};
        String[] levels = {"sites", "wells", "plates", "experiments"};
        double best = Double.MAX_VALUE;
        long bestCheckpoints = 0;
        for (int run = 1; run <= runs; run++) {
            for (LongAdder counter : EMITTED) counter.reset();
            REJECTED.reset();
            RELEASED.reset();
            CHECKPOINTS.set(0);
            StreamExecutionEnvironment env = environment(checkpoints);
            job.accept(env);
            long start = System.nanoTime();
            JobExecutionResult result = env.execute(peer);
            double wall = (System.nanoTime() - start) / 1e9;
            double seconds = result.getNetRuntime(TimeUnit.MILLISECONDS) / 1e3;
            if (REJECTED.sum() != 0) {
                throw new IllegalStateException(peer + " run " + run + " rejected " + REJECTED.sum() + " valid input lines");
            }
            for (int level = 0; level < 4; level++) {
                long got = EMITTED[level].sum();
                if (got != expected[level]) {
                    throw new IllegalStateException(String.format(
                            "%s run %d emitted %d %s, expected exactly %d", peer, run, got, levels[level], expected[level]));
                }
            }
            System.err.printf(Locale.ROOT,
                    "%s: run %d/%d: %d events in %.2f s (execute() with MiniCluster start/stop: %.2f s): %.0f events/s; "
                            + "outputs exact (%d sites, %d wells, %d plates, %d experiments; %d sites completed when their layout arrived)%s%n",
                    peer, run, runs, events, seconds, wall, events / seconds,
                    expected[0], expected[1], expected[2], expected[3], RELEASED.sum(),
                    checkpoints == null ? "" : "; " + CHECKPOINTS.get() + " checkpoints completed");
            if (seconds < best) {
                best = seconds;
                bestCheckpoints = CHECKPOINTS.get();
            }
        }
        if (checkpoints != null) note += " (" + bestCheckpoints + " completed in the best run)";
        System.out.printf(Locale.ROOT, "peer=%s figure=events_per_s value=%.0f events=%d seconds=%.2f plates=%d experiments=%d note=\"Flink %s, %s, best of %d runs in one JVM\"%n",
                peer, events / best, events, best, plates, experiments, EnvironmentInformation.getVersion(), note, runs);
    }

    /** Runs a peer's main, naming the cause on stderr and exiting non-zero on any failure. */
    static void main(String peer, Main body) {
        try {
            body.run();
            System.exit(0); // the MiniCluster's leftover threads must not keep the JVM alive
        } catch (Throwable e) {
            Throwable cause = e;
            while (cause.getCause() != null) cause = cause.getCause();
            System.err.println(peer + ": FAILED: " + e + (cause != e ? " (root cause: " + cause + ")" : ""));
            e.printStackTrace();
            System.exit(1);
        }
    }

    interface Main {
        void run() throws Exception;
    }

    static void progress(String peer, String what) {
        System.err.println(peer + ": " + what);
    }
}
