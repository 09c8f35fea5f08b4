package dagwire

import (
	"strings"

	dagwirev1 "github.com/dagwire/dagwire/clients/go/gen/dagwire/v1"
)

// Summary is a finished run in the shape of `dagwire run --output json` (docs/contracts.md §9).
type Summary struct {
	RunID  string                 `json:"run_id"`
	Status string                 `json:"status"`
	Nodes  map[string]NodeSummary `json:"nodes"`
}

// NodeSummary is one task's outcome in a Summary; Error is nil (JSON null) when empty.
type NodeSummary struct {
	Status    string            `json:"status"`
	Attempts  int32             `json:"attempts"`
	Error     *string           `json:"error"`
	Artifacts []ArtifactSummary `json:"artifacts"`
}

// ArtifactSummary is one output artifact's metadata in a Summary.
type ArtifactSummary struct {
	ArtifactID string `json:"artifact_id"`
	Name       string `json:"name"`
	SHA256     string `json:"sha256"`
	Size       int64  `json:"size"`
}

// RunStatusWord is the lowercase status word of a run ("succeeded", "failed", ...).
func RunStatusWord(status dagwirev1.RunStatus) string {
	return strings.ToLower(strings.TrimPrefix(status.String(), "RUN_STATUS_"))
}

// TaskStatusWord is the lowercase status word of a task ("succeeded", "skipped", ...).
func TaskStatusWord(status dagwirev1.TaskStatus) string {
	return strings.ToLower(strings.TrimPrefix(status.String(), "TASK_STATUS_"))
}

// SummaryOf converts a run (as GetRun returns it) to its Summary.
func SummaryOf(run *dagwirev1.Run) Summary {
	summary := Summary{
		RunID:  run.GetRunId(),
		Status: RunStatusWord(run.GetStatus()),
		Nodes:  make(map[string]NodeSummary, len(run.GetNodes())),
	}
	for _, node := range run.GetNodes() {
		out := NodeSummary{
			Status:    TaskStatusWord(node.GetStatus()),
			Attempts:  node.GetAttempts(),
			Artifacts: make([]ArtifactSummary, 0, len(node.GetArtifacts())),
		}
		if msg := node.GetError(); msg != "" {
			out.Error = &msg
		}
		for _, a := range node.GetArtifacts() {
			out.Artifacts = append(out.Artifacts, ArtifactSummary{
				ArtifactID: a.GetArtifactId(), Name: a.GetName(), SHA256: a.GetSha256(), Size: a.GetSize(),
			})
		}
		summary.Nodes[node.GetNodeId()] = out
	}
	return summary
}
