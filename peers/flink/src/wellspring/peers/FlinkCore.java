package wellspring.peers;

import java.util.List;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.datastream.BroadcastStream;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.SingleOutputStreamOperator;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.streaming.api.functions.co.KeyedBroadcastProcessFunction;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

import wellspring.peers.Workload.Layout;

/**
 * The aggregation core: channel images to sites, wells, plates and experiments in Flink's
 * keyed state on the heap, each aggregate emitted once, repeats dropped, the layouts a
 * broadcast stream that the site level joins (a site of an experiment whose layout has not
 * arrived waits in state; the layout's arrival completes those that are full). No parsing,
 * no payload, no checkpoints: what Wellspring's `hierarchy/four-levels/lab-400-plates`
 * bench (actors/benches/aggregation.rs) measures. Its workload by default: 10 experiments
 * of 40 plates, 2 of the layouts halfway; `--plates N` gives the 10 experiments N/10
 * plates each.
 */
public final class FlinkCore {
    static final String PEER = "flink-core";
    static final int EXPERIMENTS = 10, LATE = 2, PLATES = 400;

    /**
     * A channel image (channel > 0), or a completed aggregate's key (the finer fields 0 or
     * ""), which carries its experiment's layout sizes on to the coarser levels.
     */
    public static final class Key {
        public String experiment = "";
        public int plate;
        public String well = "";
        public int site;
        public int channel;
        /** Set by the site level from the layout: the sizes of the well, plate and experiment. */
        public int sites, wells, plates;

        public Key() {}

        Key(String experiment, int plate, String well, int site, int channel) {
            this.experiment = experiment;
            this.plate = plate;
            this.well = well;
            this.site = site;
            this.channel = channel;
        }

        Key coarser(int plate, String well, int site) {
            Key k = new Key(experiment, plate, well, site, 0);
            k.sites = sites;
            k.wells = wells;
            k.plates = plates;
            return k;
        }
    }

    static String siteKey(Key k) {
        return k.experiment + '/' + k.plate + '/' + k.well + '/' + k.site;
    }

    /**
     * The site level: the channels seen so far as a bitmask in keyed state (bit 63 once the
     * site is emitted). A channel already seen (a repeated image) changes nothing. With the
     * experiment's layout in the broadcast state, the site is emitted when its last distinct
     * channel arrives; without it, it waits, and the layout's arrival emits every site of
     * the experiment that is full by then. The mask stays afterwards, so a repeat that comes
     * after completion is dropped too.
     */
    static final class SiteLevel extends KeyedBroadcastProcessFunction<String, Key, Layout, Key> {
        static final MapStateDescriptor<String, Layout> LAYOUTS =
                new MapStateDescriptor<>("layouts", Types.STRING, TypeInformation.of(Layout.class));
        static final ValueStateDescriptor<Long> SEEN = new ValueStateDescriptor<>("channels", Types.LONG);
        static final long DONE = 1L << 63;
        private transient ValueState<Long> seen;

        @Override
        public void open(OpenContext context) {
            seen = getRuntimeContext().getState(SEEN);
        }

        static void check(Key k, Layout layout) {
            if (k.plate < 1 || k.plate > layout.plates || Workload.wellIndex(k.well) < 0 || k.site < 1
                    || k.site > layout.sites || k.channel > layout.channels) {
                throw new IllegalArgumentException("an image out of its layout " + layout + ": " + siteKey(k) + " channel " + k.channel);
            }
        }

        static Key site(Key k, Layout layout) {
            Key site = new Key(k.experiment, k.plate, k.well, k.site, 0);
            site.sites = layout.sites;
            site.wells = layout.wells;
            site.plates = layout.plates;
            return site;
        }

        @Override
        public void processElement(Key in, ReadOnlyContext context, Collector<Key> out) throws Exception {
            if (in.channel < 1 || in.channel > 63) throw new IllegalArgumentException("channel out of range: " + in.channel);
            Long value = seen.value();
            long bits = value == null ? 0 : value;
            long bit = 1L << (in.channel - 1);
            if ((bits & bit) != 0) return;
            bits |= bit;
            Layout layout = context.getBroadcastState(LAYOUTS).get(in.experiment);
            if (layout != null) {
                check(in, layout);
                if (Long.bitCount(bits) == layout.channels) {
                    out.collect(site(in, layout));
                    bits |= DONE;
                }
            }
            seen.update(bits);
        }

        @Override
        public void processBroadcastElement(Layout layout, Context context, Collector<Key> out) throws Exception {
            context.getBroadcastState(LAYOUTS).put(layout.experiment, layout);
            String prefix = layout.experiment + '/';
            context.applyToKeyedState(SEEN, (key, state) -> {
                if (!key.startsWith(prefix)) return;
                long bits = state.value();
                if ((bits & DONE) != 0) return;
                String[] parts = key.split("/");
                Key site = new Key(layout.experiment, Integer.parseInt(parts[1]), parts[2], Integer.parseInt(parts[3]),
                        64 - Long.numberOfLeadingZeros(bits)); // its highest channel, for the check
                check(site, layout);
                if (Long.bitCount(bits) == layout.channels) {
                    out.collect(site(site, layout));
                    state.update(bits | DONE);
                    Workload.RELEASED.increment();
                }
            });
        }
    }

    /** The three coarser levels: what keys each, which member an input is, and how many there are. */
    enum Level {
        WELL {
            String key(Key k) { return k.experiment + '/' + k.plate + '/' + k.well; }
            int member(Key k) { return k.site - 1; }
            int size(Key k) { return k.sites; }
            Key done(Key k) { return k.coarser(k.plate, k.well, 0); }
        },
        PLATE {
            String key(Key k) { return k.experiment + '/' + k.plate; }
            int member(Key k) { return Workload.wellIndex(k.well); }
            int size(Key k) { return k.wells; }
            Key done(Key k) { return k.coarser(k.plate, "", 0); }
        },
        EXPERIMENT {
            String key(Key k) { return k.experiment; }
            int member(Key k) { return k.plate - 1; }
            int size(Key k) { return k.plates; }
            Key done(Key k) { return k.coarser(0, "", 0); }
        };

        abstract String key(Key k);

        abstract int member(Key k);

        abstract int size(Key k);

        abstract Key done(Key k);
    }

    /**
     * A coarser level: the members seen so far as a bitmask in keyed state (the last word
     * counts them). A member already seen changes nothing; the aggregate is emitted when
     * the last distinct one arrives. The mask stays afterwards.
     */
    static final class Aggregate extends KeyedProcessFunction<String, Key, Key> {
        private final Level level;
        private transient ValueState<long[]> seen;

        Aggregate(Level level) {
            this.level = level;
        }

        @Override
        public void open(OpenContext context) {
            seen = getRuntimeContext().getState(new ValueStateDescriptor<>("seen", long[].class));
        }

        @Override
        public void processElement(Key in, Context context, Collector<Key> out) throws Exception {
            int member = level.member(in), size = level.size(in);
            if (member < 0 || member >= size) throw new IllegalArgumentException(level + " member out of layout: " + member);
            long[] bits = seen.value();
            if (bits == null) bits = new long[(size + 63) / 64 + 1];
            long bit = 1L << (member & 63);
            if ((bits[member >> 6] & bit) != 0) return;
            bits[member >> 6] |= bit;
            if (++bits[bits.length - 1] == size) out.collect(level.done(in));
            seen.update(bits);
        }
    }

    /** Images to the main output, layouts to LAYOUT. */
    static final class Route extends ProcessFunction<Long, Key> {
        static final OutputTag<Layout> LAYOUT = new OutputTag<>("layouts", TypeInformation.of(Layout.class));

        @Override
        public void processElement(Long i, Context context, Collector<Key> out) {
            Object event = INPUT[Workload.position(i, INPUT.length)];
            if (event instanceof Layout layout) context.output(LAYOUT, layout);
            else out.collect((Key) event);
        }
    }

    static Object[] INPUT; // read by the source's subtasks, which run in this JVM

    public static void main(String[] args) {
        Workload.main(PEER, () -> {
            Workload w = new Workload(args, EXPERIMENTS, LATE, PLATES);
            Workload.progress(PEER, "generating " + w.experiments + " experiments of " + w.platesEach()
                    + " plates of channel images (+1% repeats), shuffled together; " + w.late + " layouts halfway");
            List<Object> input = w.input(Key::new, false);
            INPUT = input.toArray();
            int images = INPUT.length - w.experiments; // the events: images including the repeats
            Workload.progress(PEER, images + " image events in memory; running the job " + w.runs + " times");
            w.measure(PEER, "HashMapStateBackend, parallelism 2, layouts broadcast, no checkpoints", images, null, env -> {
                // The source hands out halves of the input's positions, one per subtask.
                SingleOutputStreamOperator<Key> routed = env.fromSequence(0, INPUT.length - 1)
                        .process(new Route()).returns(Key.class).name("channel images and layouts");
                BroadcastStream<Layout> layouts = routed.getSideOutput(Route.LAYOUT).broadcast(SiteLevel.LAYOUTS);
                DataStream<Key> stream = routed.keyBy(FlinkCore::siteKey, Types.STRING).connect(layouts)
                        .process(new SiteLevel()).returns(Key.class).name("SITE aggregates");
                stream.sinkTo(new Workload.CountingSink<>(0)).name("SITE count");
                for (Level level : Level.values()) {
                    stream = stream.keyBy(level::key, Types.STRING)
                            .process(new Aggregate(level)).returns(Key.class).name(level + " aggregates");
                    stream.sinkTo(new Workload.CountingSink<>(level.ordinal() + 1)).name(level + " count");
                }
            });
        });
    }
}
