package dagwire.client;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import dagwire.v1.Common.Artifact;
import dagwire.v1.Common.NodeSummary;
import dagwire.v1.Common.Run;

/**
 * A run's summary in the shape of {@code dagwire run --output json} (docs/contracts.md §9): {@code
 * {"run_id", "status", "nodes": {id: {"status", "attempts", "error", "artifacts": [{"artifact_id",
 * "name", "sha256", "size"}]}}}}, tasks in spec order, {@code error} null when empty.
 */
final class SummaryJson {
  private static final Gson GSON =
      new GsonBuilder().serializeNulls().disableHtmlEscaping().setPrettyPrinting().create();

  private SummaryJson() {}

  static String of(Run run) {
    JsonObject nodes = new JsonObject();
    for (NodeSummary node : run.getNodesList()) {
      JsonArray artifacts = new JsonArray();
      for (Artifact artifact : node.getArtifactsList()) {
        JsonObject item = new JsonObject();
        item.addProperty("artifact_id", artifact.getArtifactId());
        item.addProperty("name", artifact.getName());
        item.addProperty("sha256", artifact.getSha256());
        item.addProperty("size", artifact.getSize());
        artifacts.add(item);
      }
      JsonObject summary = new JsonObject();
      summary.addProperty("status", Words.of(node.getStatus()));
      summary.addProperty("attempts", node.getAttempts());
      if (node.getError().isEmpty()) {
        summary.add("error", JsonNull.INSTANCE);
      } else {
        summary.addProperty("error", node.getError());
      }
      summary.add("artifacts", artifacts);
      nodes.add(node.getNodeId(), summary);
    }
    JsonObject root = new JsonObject();
    root.addProperty("run_id", run.getRunId());
    root.addProperty("status", Words.of(run.getStatus()));
    root.add("nodes", nodes);
    return GSON.toJson(root);
  }
}
