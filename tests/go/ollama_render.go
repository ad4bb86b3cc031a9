// Renders Ollama TEMPLATEs the way Ollama does for /api/chat (template/template.go: Go text/template, executed with
// .System = every system message joined by a blank line and .Messages), for tests/test_export_gguf.py.
// stdin: [{"template": "...", "messages": [{"role": "...", "content": "..."}]}, ...]; stdout: a JSON list of prompts.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	rendered := []string{}
	for _, c := range cases {
		var system []string
		for _, m := range c.Messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var out strings.Builder
		tmpl := template.Must(template.New("").Parse(c.Template))
		if err := tmpl.Execute(&out, map[string]any{"System": strings.Join(system, "\n\n"), "Messages": c.Messages}); err != nil {
			panic(err)
		}
		rendered = append(rendered, out.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(rendered); err != nil {
		panic(err)
	}
}
