package wellspring.peers;

import java.io.File;
import java.io.IOException;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.BitSet;
import java.util.Comparator;
import java.util.List;
import java.util.stream.Stream;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFlatMapFunction;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.MapperFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectReader;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.PropertyNamingStrategies;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.json.JsonMapper;
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
 * End to end: JSON lines, as Wellspring's engine reads them from its input topics (channel
 * images on one, experiment metadata, the layouts, on another), parsed and validated, the
 * four levels with the records' payload (a site carries its channel images, a well its
 * sites' images, a plate its wells' counts, the experiment its plates'), every aggregate
 * written out as JSON, and exactly-once checkpoints of all that state every second to a
 * local directory: Flink's way to the durable state that Wellspring keeps in its
 * changelogs. The layouts are a broadcast stream that the site level joins; a site whose
 * experiment's layout has not arrived waits in state.
 *
 * <p>The workload is that of Wellspring's `engine/four-groupings/lab-40-plates` bench
 * (nodes/benches/pipeline.rs, `Input::lab`): 4 experiments of 10 plates, every image
 * shuffled among all of them, 1% of each experiment's images sent twice, the metadata of
 * the first 3 experiments first and the last one's halfway through. `--plates N` gives the
 * 4 experiments N/4 plates each.
 */
public final class FlinkEndToEnd {
    static final String PEER = "flink-end-to-end";
    static final int EXPERIMENTS = 4, LATE = 1, PLATES = 40;

    /** A channel image as the JSON line has it (Jackson maps experiment_id to experimentId, ...). */
    public static final class Image {
        public String experimentId, cellType, plateBarcode, well, location;
        public int plateNumber, site, channel;
    }

    /**
     * What every partial aggregate has: the distinct members in (-1 once emitted), and
     * its experiment's layout sizes, which the site level sets from the layout and the
     * coarser levels take on.
     */
    public abstract static class Partial {
        public String experimentId, cellType;
        public int count;
        public int layoutSites, layoutWells, layoutPlates;

        void layout(Partial from) {
            layoutSites = from.layoutSites;
            layoutWells = from.layoutWells;
            layoutPlates = from.layoutPlates;
        }

        /** Drops the payload once emitted; the key stays in state so late repeats are still dropped. */
        abstract void drop();

        abstract void write(JsonGenerator g) throws IOException;
    }

    /** Wellspring's site_level record: the site's channel images, by channel. */
    public static final class Site extends Partial {
        public String plateBarcode, well;
        public int plateNumber, site;
        public String[] locations;

        void drop() { locations = null; }

        void write(JsonGenerator g) throws IOException {
            g.writeStartObject();
            head(g, this, plateNumber, plateBarcode);
            g.writeStringField("well", well);
            g.writeNumberField("site", site);
            channels(g, locations);
            g.writeEndObject();
        }
    }

    /** Wellspring's well_level record: the well's sites with their channel images, by site. */
    public static final class Well extends Partial {
        public String plateBarcode, well;
        public int plateNumber;
        public String[][] sites;

        void drop() { sites = null; }

        void write(JsonGenerator g) throws IOException {
            g.writeStartObject();
            head(g, this, plateNumber, plateBarcode);
            g.writeStringField("well", well);
            g.writeArrayFieldStart("sites");
            for (int s = 0; s < sites.length; s++) {
                g.writeStartObject();
                g.writeNumberField("site", s + 1);
                channels(g, sites[s]);
                g.writeEndObject();
            }
            g.writeEndArray();
            g.writeEndObject();
        }
    }

    /** Wellspring's plate_level record: each well's sites and images, by well index in the layout. */
    public static final class Plate extends Partial {
        public String plateBarcode;
        public int plateNumber;
        public int[] wellSites, wellImages;

        void drop() { wellSites = wellImages = null; }

        void write(JsonGenerator g) throws IOException {
            g.writeStartObject();
            head(g, this, plateNumber, plateBarcode);
            long images = 0;
            g.writeArrayFieldStart("wells");
            for (int w = 0; w < wellSites.length; w++) {
                g.writeStartObject();
                g.writeStringField("well", Workload.WELLS[w]);
                g.writeNumberField("sites", wellSites[w]);
                g.writeNumberField("images", wellImages[w]);
                g.writeEndObject();
                images += wellImages[w];
            }
            g.writeEndArray();
            g.writeNumberField("images", images);
            g.writeEndObject();
        }
    }

    /** Wellspring's experiment_level record: each plate's barcode, wells and images, by plate number. */
    public static final class Experiment extends Partial {
        public String[] barcodes;
        public int[] wells;
        public long[] images;

        void drop() { barcodes = null; wells = null; images = null; }

        void write(JsonGenerator g) throws IOException {
            g.writeStartObject();
            g.writeStringField("experiment_id", experimentId);
            g.writeStringField("cell_type", cellType);
            long total = 0;
            g.writeArrayFieldStart("plates");
            for (int p = 0; p < barcodes.length; p++) {
                g.writeStartObject();
                g.writeNumberField("plate_number", p + 1);
                g.writeStringField("plate_barcode", barcodes[p]);
                g.writeNumberField("wells", wells[p]);
                g.writeNumberField("images", images[p]);
                g.writeEndObject();
                total += images[p];
            }
            g.writeEndArray();
            g.writeNumberField("images", total);
            g.writeEndObject();
        }
    }

    static void head(JsonGenerator g, Partial a, int plate, String barcode) throws IOException {
        g.writeStringField("experiment_id", a.experimentId);
        g.writeStringField("cell_type", a.cellType);
        g.writeNumberField("plate_number", plate);
        g.writeStringField("plate_barcode", barcode);
    }

    static void channels(JsonGenerator g, String[] locations) throws IOException {
        g.writeArrayFieldStart("channels");
        for (int c = 0; c < locations.length; c++) {
            g.writeStartObject();
            g.writeNumberField("channel", c + 1);
            g.writeStringField("location", locations[c]);
            g.writeEndObject();
        }
        g.writeEndArray();
    }

    /**
     * Parses a line strictly (no unknown fields, no strings or floats for numbers, no
     * nulls) and validates what can be without the layout; a line that fails is counted
     * and dropped. The layout's checks (plate, site and channel within it) are the site
     * level's.
     */
    static final class Parse extends RichFlatMapFunction<String, Image> {
        private transient ObjectReader reader;

        @Override
        public void open(OpenContext context) {
            reader = reader(Image.class);
        }

        @Override
        public void flatMap(String line, Collector<Image> out) {
            Image i;
            try {
                i = reader.readValue(line);
            } catch (IOException e) {
                Workload.REJECTED.increment();
                return;
            }
            boolean valid = i.experimentId != null && !i.experimentId.isEmpty()
                    && i.cellType != null && i.plateBarcode != null && i.location != null
                    && Workload.wellIndex(i.well) >= 0 // a letter and 2 digits, and on the plate
                    && i.plateNumber >= 1 && i.site >= 1 && i.site <= MAX_SITE
                    && i.channel >= 1 && i.channel <= MAX_CHANNEL;
            if (valid) out.collect(i);
            else Workload.REJECTED.increment();
        }
    }

    /** Wellspring's limits on a site and a channel number. */
    static final int MAX_SITE = 10_000, MAX_CHANNEL = 64;

    static ObjectReader reader(Class<?> type) {
        return JsonMapper.builder()
                .propertyNamingStrategy(PropertyNamingStrategies.SNAKE_CASE)
                .disable(MapperFeature.ALLOW_COERCION_OF_SCALARS)
                .disable(DeserializationFeature.ACCEPT_FLOAT_AS_INT)
                .enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES)
                .build().readerFor(type);
    }

    /** Wellspring's experiment_metadata record, as Jackson reads it. */
    public static final class LayoutFields {
        public String experimentId;
        public int channelsPerSite, sitesPerWell;
        public PlateFields[] plates;
    }

    /** Wellspring's plate_layout record. */
    public static final class PlateFields {
        public int plateNumber;
        public String plateBarcode;
        public String[] wells;
    }

    /** The metadata line Wellspring's engine reads: the experiment's layout (ExperimentLayout::to_value). */
    static String metadata(Layout layout) {
        StringWriter text = new StringWriter(4096 * layout.plates);
        try (JsonGenerator g = new JsonFactory().createGenerator(text)) {
            g.writeStartObject();
            g.writeStringField("experiment_id", layout.experiment);
            g.writeNumberField("channels_per_site", layout.channels);
            g.writeNumberField("sites_per_well", layout.sites);
            g.writeArrayFieldStart("plates");
            for (int p = 1; p <= layout.plates; p++) {
                g.writeStartObject();
                g.writeNumberField("plate_number", p);
                g.writeStringField("plate_barcode", Workload.barcode(layout.experiment, p));
                g.writeArrayFieldStart("wells");
                for (String well : Workload.WELLS) g.writeString(well);
                g.writeEndArray();
                g.writeEndObject();
            }
            g.writeEndArray();
            g.writeEndObject();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        return text.toString();
    }

    /**
     * Routes the source's lines by topic: images on, metadata parsed and validated to
     * LAYOUT. This peer knows the standard plate only (its 308 wells, plates numbered from
     * 1): a layout of any other shape fails the job, it is not silently misread.
     */
    static final class Route extends ProcessFunction<Long, String> {
        static final OutputTag<Layout> LAYOUT = new OutputTag<>("layouts", TypeInformation.of(Layout.class));
        private transient ObjectReader reader;

        @Override
        public void open(OpenContext context) {
            reader = reader(LayoutFields.class);
        }

        @Override
        public void processElement(Long i, Context context, Collector<String> out) throws IOException {
            int at = Workload.position(i, INPUT.length);
            if (!METADATA.get(at)) {
                out.collect(INPUT[at]);
                return;
            }
            LayoutFields f = reader.readValue(INPUT[at]);
            if (f.experimentId == null || f.experimentId.isEmpty() || f.plates == null || f.plates.length == 0
                    || f.channelsPerSite < 1 || f.channelsPerSite > MAX_CHANNEL || f.sitesPerWell < 1 || f.sitesPerWell > MAX_SITE) {
                throw new IllegalArgumentException("invalid experiment metadata: " + INPUT[at]);
            }
            for (int p = 0; p < f.plates.length; p++) {
                if (f.plates[p].plateNumber != p + 1 || !Arrays.equals(f.plates[p].wells, Workload.WELLS)) {
                    throw new IllegalArgumentException(f.experimentId + ": this peer knows only plates numbered from 1 with the standard 308 wells");
                }
            }
            Layout layout = new Layout(f.experimentId, f.plates.length);
            layout.sites = f.sitesPerWell;
            layout.channels = f.channelsPerSite;
            context.output(LAYOUT, layout);
        }
    }

    /**
     * The site level: the partial site in keyed state, filled channel by channel; a channel
     * already in (a repeat) changes nothing. With its experiment's layout in the broadcast
     * state, the image is checked against it and the site emitted when its last distinct
     * channel arrives; without it, the site waits, and the layout's arrival checks and
     * emits every site of the experiment full by then. Once emitted, its payload is
     * dropped and the key kept, so late repeats are dropped too.
     */
    static final class SiteLevel extends KeyedBroadcastProcessFunction<String, Image, Layout, Site>
            implements CheckpointListener {
        static final MapStateDescriptor<String, Layout> LAYOUTS =
                new MapStateDescriptor<>("layouts", Types.STRING, TypeInformation.of(Layout.class));
        static final ValueStateDescriptor<Site> PARTIAL = new ValueStateDescriptor<>("partial", Site.class);
        private transient ValueState<Site> state;

        @Override
        public void open(OpenContext context) {
            state = getRuntimeContext().getState(PARTIAL);
        }

        static boolean fits(Image i, Layout layout) {
            return i.plateNumber <= layout.plates && i.site <= layout.sites && i.channel <= layout.channels;
        }

        /** Emits the site if it is full, keeping its key as emitted; false if it is not full. */
        static boolean complete(Site s, Layout layout, Collector<Site> out) {
            if (s.count != layout.channels) return false;
            if (s.locations.length != layout.channels) s.locations = Arrays.copyOf(s.locations, layout.channels);
            s.layoutSites = layout.sites;
            s.layoutWells = layout.wells;
            s.layoutPlates = layout.plates;
            out.collect(s); // serialised or copied here: changing it afterwards is safe
            s.drop();
            s.count = -1;
            return true;
        }

        @Override
        public void processElement(Image in, ReadOnlyContext context, Collector<Site> out) throws Exception {
            Layout layout = context.getBroadcastState(LAYOUTS).get(in.experimentId);
            if (layout != null && !fits(in, layout)) {
                Workload.REJECTED.increment();
                return;
            }
            Site s = state.value();
            if (s == null) {
                s = new Site();
                s.experimentId = in.experimentId; s.cellType = in.cellType;
                s.plateNumber = in.plateNumber; s.plateBarcode = in.plateBarcode; s.well = in.well; s.site = in.site;
                s.locations = new String[layout != null ? layout.channels : Workload.CHANNELS];
            }
            if (s.count < 0) return;
            if (in.channel > s.locations.length) s.locations = Arrays.copyOf(s.locations, in.channel);
            if (s.locations[in.channel - 1] != null) return;
            s.locations[in.channel - 1] = in.location;
            s.count++;
            if (layout != null) complete(s, layout, out);
            state.update(s);
        }

        @Override
        public void processBroadcastElement(Layout layout, Context context, Collector<Site> out) throws Exception {
            context.getBroadcastState(LAYOUTS).put(layout.experiment, layout);
            String prefix = layout.experiment + '/';
            context.applyToKeyedState(PARTIAL, (key, partial) -> {
                if (!key.startsWith(prefix)) return;
                Site s = partial.value();
                if (s.count < 0) return;
                if (s.plateNumber > layout.plates || s.site > layout.sites) { // all its images out of the layout
                    Workload.REJECTED.add(s.count);
                    partial.clear();
                    return;
                }
                for (int c = layout.channels; c < s.locations.length; c++) {
                    if (s.locations[c] != null) { // an image out of the layout
                        Workload.REJECTED.increment();
                        s.locations[c] = null;
                        s.count--;
                    }
                }
                if (complete(s, layout, out)) Workload.RELEASED.increment();
                partial.update(s);
            });
        }

        @Override
        public void notifyCheckpointComplete(long checkpointId) {
            Workload.CHECKPOINTS.accumulateAndGet(checkpointId, Math::max);
        }
    }

    /**
     * A coarser level: the partial aggregate in keyed state is the record itself, filled
     * member by member, its size the layout's (which its members carry); a member already
     * in changes nothing; the record is emitted when the last distinct one arrives, then
     * its payload dropped and the key kept.
     */
    abstract static class Level<I extends Partial, A extends Partial> extends KeyedProcessFunction<String, I, A>
            implements CheckpointListener {
        private final Class<A> type;
        private transient ValueState<A> state;

        Level(Class<A> type) {
            this.type = type;
        }

        /** How many members the aggregate has, by the layout. */
        abstract int size(A partial);

        /** A new partial aggregate, its key and provenance from its first member. */
        abstract A start(I first);

        /** Puts the member in; false if it was in already. */
        abstract boolean add(A partial, I member);

        @Override
        public void open(OpenContext context) {
            state = getRuntimeContext().getState(new ValueStateDescriptor<>("partial", type));
        }

        @Override
        public void processElement(I in, Context context, Collector<A> out) throws Exception {
            A partial = state.value();
            if (partial == null) {
                partial = start(in);
                partial.layout(in);
            }
            if (partial.count < 0 || !add(partial, in)) return;
            if (++partial.count == size(partial)) {
                out.collect(partial); // serialised or copied here: changing it afterwards is safe
                partial.drop();
                partial.count = -1;
            }
            state.update(partial);
        }

        @Override
        public void notifyCheckpointComplete(long checkpointId) {
            Workload.CHECKPOINTS.accumulateAndGet(checkpointId, Math::max);
        }
    }

    static final class WellLevel extends Level<Site, Well> {
        WellLevel() { super(Well.class); }

        int size(Well w) { return w.layoutSites; }

        Well start(Site s) {
            Well w = new Well();
            w.experimentId = s.experimentId; w.cellType = s.cellType;
            w.plateNumber = s.plateNumber; w.plateBarcode = s.plateBarcode; w.well = s.well;
            w.sites = new String[s.layoutSites][];
            return w;
        }

        boolean add(Well w, Site s) {
            if (w.sites[s.site - 1] != null) return false;
            w.sites[s.site - 1] = s.locations;
            return true;
        }
    }

    static final class PlateLevel extends Level<Well, Plate> {
        PlateLevel() { super(Plate.class); }

        int size(Plate p) { return p.layoutWells; }

        Plate start(Well w) {
            Plate p = new Plate();
            p.experimentId = w.experimentId; p.cellType = w.cellType;
            p.plateNumber = w.plateNumber; p.plateBarcode = w.plateBarcode;
            p.wellSites = new int[w.layoutWells];
            p.wellImages = new int[w.layoutWells];
            return p;
        }

        boolean add(Plate p, Well w) {
            int index = Workload.wellIndex(w.well);
            if (p.wellSites[index] != 0) return false;
            p.wellSites[index] = w.sites.length;
            for (String[] site : w.sites) p.wellImages[index] += site.length;
            return true;
        }
    }

    static final class ExperimentLevel extends Level<Plate, Experiment> {
        ExperimentLevel() { super(Experiment.class); }

        int size(Experiment e) { return e.layoutPlates; }

        Experiment start(Plate p) {
            Experiment e = new Experiment();
            e.experimentId = p.experimentId; e.cellType = p.cellType;
            e.barcodes = new String[p.layoutPlates];
            e.wells = new int[p.layoutPlates];
            e.images = new long[p.layoutPlates];
            return e;
        }

        boolean add(Experiment e, Plate p) {
            int index = p.plateNumber - 1;
            if (e.barcodes[index] != null) return false;
            e.barcodes[index] = p.plateBarcode;
            e.wells[index] = p.wellSites.length;
            for (int images : p.wellImages) e.images[index] += images;
            return true;
        }
    }

    /** Writes an emitted aggregate as the JSON its consumers would read. */
    static final class ToJson<A extends Partial> extends RichMapFunction<A, String> {
        private transient JsonFactory factory;

        @Override
        public void open(OpenContext context) { factory = new JsonFactory(); }

        @Override
        public String map(A aggregate) throws IOException {
            StringWriter text = new StringWriter(256);
            try (JsonGenerator g = factory.createGenerator(text)) {
                aggregate.write(g);
            }
            return text.toString();
        }
    }

    /** The line Wellspring's engine parses (ChannelImage::to_value), built by hand: String.format for 300,000 lines is slow. */
    static String line(String e, int plate, String well, int site, int channel) {
        return "{\"experiment_id\": \"" + e + "\", \"cell_type\": \"" + Workload.CELL_TYPE
                + "\", \"plate_number\": " + plate + ", \"plate_barcode\": \"" + Workload.barcode(e, plate)
                + "\", \"well\": \"" + well + "\", \"site\": " + site + ", \"channel\": " + channel
                + ", \"location\": \"s3://wellspring-demo/" + e + "/plate-" + plate + "/" + well + "/site-" + site
                + "/ch" + channel + ".tiff\"}";
    }

    static String[] INPUT; // read by the source's subtasks, which run in this JVM
    static BitSet METADATA; // which of INPUT are metadata lines, the rest channel images

    public static void main(String[] args) {
        Workload.main(PEER, () -> {
            Workload w = new Workload(args, EXPERIMENTS, LATE, PLATES);
            Workload.progress(PEER, "generating " + w.experiments + " experiments of " + w.platesEach()
                    + " plates of JSON lines (+1% repeats), shuffled together; " + w.late + " experiment's metadata halfway");
            List<Object> events = w.input(FlinkEndToEnd::line, true);
            INPUT = new String[events.size()];
            METADATA = new BitSet(events.size());
            for (int i = 0; i < INPUT.length; i++) {
                Object event = events.get(i);
                if (event instanceof Layout layout) {
                    INPUT[i] = metadata(layout);
                    METADATA.set(i);
                } else {
                    INPUT[i] = (String) event;
                }
            }
            events = null;
            int images = INPUT.length - w.experiments; // the events: images including the repeats
            // Under java.io.tmpdir, which bench-peers points at a directory of its own under /tmp.
            File checkpoints = w.checkpoints ? Files.createTempDirectory("checkpoints-").toFile() : null;
            Workload.progress(PEER, images + " image lines and " + w.experiments + " metadata lines in memory; "
                    + (checkpoints == null ? "no checkpoints" : "checkpoints to " + checkpoints)
                    + "; running the job " + w.runs + " times");
            String note = "JSON lines parsed (Jackson) and validated, layouts broadcast, aggregates written as JSON, HashMapStateBackend, parallelism 2, "
                    + (checkpoints == null ? "NO checkpoints" : "exactly-once checkpoints every 1 s to a local directory");
            try {
                w.measure(PEER, note, images, checkpoints, env -> {
                    // The source hands out halves of the input's positions, one per subtask.
                    SingleOutputStreamOperator<String> lines = env.fromSequence(0, INPUT.length - 1)
                            .process(new Route()).returns(Types.STRING).name("JSON lines");
                    BroadcastStream<Layout> layouts = lines.getSideOutput(Route.LAYOUT).broadcast(SiteLevel.LAYOUTS);
                    DataStream<Site> sites = lines.flatMap(new Parse()).name("parse and validate")
                            .keyBy(i -> i.experimentId + '/' + i.plateNumber + '/' + i.well + '/' + i.site, Types.STRING)
                            .connect(layouts).process(new SiteLevel()).returns(Site.class).name("sites");
                    DataStream<Well> wells = sites
                            .keyBy(s -> s.experimentId + '/' + s.plateNumber + '/' + s.well, Types.STRING)
                            .process(new WellLevel()).name("wells");
                    DataStream<Plate> plates = wells
                            .keyBy(p -> p.experimentId + '/' + p.plateNumber, Types.STRING)
                            .process(new PlateLevel()).name("plates");
                    DataStream<Experiment> experiments = plates
                            .keyBy(p -> p.experimentId, Types.STRING)
                            .process(new ExperimentLevel()).name("experiments");
                    DataStream<?>[] levels = {sites, wells, plates, experiments};
                    for (int l = 0; l < levels.length; l++) {
                        @SuppressWarnings("unchecked")
                        DataStream<Partial> level = (DataStream<Partial>) levels[l];
                        level.map(new ToJson<>()).returns(Types.STRING).name("to JSON " + l)
                                .sinkTo(new Workload.CountingSink<>(l)).name("count " + l);
                    }
                });
            } finally {
                if (checkpoints != null) {
                    try (Stream<Path> files = Files.walk(checkpoints.toPath())) {
                        files.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
                    }
                }
            }
        });
    }
}
