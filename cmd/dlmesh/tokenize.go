package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/chat"
	"github.com/dlmesh/dlmesh/tokenizer"
)

func tokenizeCmd() *cobra.Command {
	var dir, chatFile string
	var decode, render bool
	cmd := &cobra.Command{
		Use:   "tokenize [--model DIR] [--decode] TEXT | --chat FILE.json [--render]",
		Short: "Print the token ids of TEXT or of a chat request as one JSON array (or, with --decode, the text of a JSON id array)",
		Long: `Print the token ids of TEXT as one JSON array.

With --chat FILE.json (- reads stdin), FILE holds a chat request,
{"messages": [...], "tools": [...], "add_generation_prompt": true}, rendered with the model's
chat template (tokenizer_config.json's chat_template, or the built-in one); the ids of the
rendered text are printed, or with --render the text itself. add_generation_prompt defaults to
true; other fields are template variables.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if chatFile != "" {
				if len(args) != 0 {
					return errors.New("--chat takes no TEXT argument")
				}
				if decode {
					return errors.New("--chat and --decode exclude each other")
				}
				return nil
			}
			if render {
				return errors.New("--render needs --chat FILE.json")
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := resolveModelDir(dir)
			if err != nil {
				return err
			}
			tok, err := tokenizer.Load(d)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if decode {
				var ids []int32
				if err := json.Unmarshal([]byte(strings.TrimSpace(args[0])), &ids); err != nil {
					return fmt.Errorf("--decode wants a JSON array of token ids, like [952, 2311]: %w", err)
				}
				fmt.Fprintln(out, tok.Decode(ids))
				return nil
			}
			text := ""
			if chatFile != "" {
				if text, err = renderChatFile(cmd.InOrStdin(), chatFile, d); err != nil {
					return err
				}
				if render {
					_, err := io.WriteString(out, text)
					return err
				}
			} else {
				text = args[0]
			}
			ids := tok.Encode(text)
			if ids == nil {
				ids = []int32{}
			}
			b, _ := json.Marshal(ids)
			fmt.Fprintln(out, string(b))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "model", "", "model directory (default: the bundled llada2-tiny-go)")
	cmd.Flags().BoolVar(&decode, "decode", false, "decode a JSON array of ids instead")
	cmd.Flags().StringVar(&chatFile, "chat", "", `a chat request in JSON ({"messages": [...], "tools": [...], "add_generation_prompt": true}); - reads stdin`)
	cmd.Flags().BoolVar(&render, "render", false, "with --chat: print the rendered text, not its ids")
	return cmd
}

// renderChatFile reads a chat request from path (- for stdin) and renders it with the chat
// template of modelDir.
func renderChatFile(stdin io.Reader, path, modelDir string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("--chat: %w", err)
	}
	req, err := chat.ParseRequest(b)
	if err != nil {
		return "", fmt.Errorf("--chat %s: %w", path, err)
	}
	tmpl, err := chat.Load(modelDir)
	if err != nil {
		return "", err
	}
	text, err := tmpl.Render(req)
	if err != nil {
		return "", fmt.Errorf("--chat %s: %w", path, err)
	}
	return text, nil
}
