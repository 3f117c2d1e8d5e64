package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/tokenizer"
)

func tokenizeCmd() *cobra.Command {
	var dir string
	var decode bool
	cmd := &cobra.Command{
		Use:   "tokenize [--model DIR] [--decode] TEXT",
		Short: "Print the token ids of TEXT as one JSON array (or, with --decode, the text of a JSON id array)",
		Args:  cobra.ExactArgs(1),
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
			ids := tok.Encode(args[0])
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
	return cmd
}
