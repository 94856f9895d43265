package fcemu

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// specYAML is Firecracker's official API spec, shipped as data.
//
//go:embed firecracker-api-v1.16.1.yaml
var specYAML string

// SpecVersion is the Firecracker release whose API spec is embedded.
const SpecVersion = "1.16.1"

// Spec is a parsed Swagger 2.0 document, reduced to what request
// validation needs.
type Spec struct {
	Paths       map[string]map[string]*Operation `yaml:"paths"`
	Definitions map[string]*Schema               `yaml:"definitions"`
}

// Operation is one method of one path.
type Operation struct {
	ID         string      `yaml:"operationId"`
	Parameters []Parameter `yaml:"parameters"`
}

// Parameter is a path or body parameter.
type Parameter struct {
	Name     string  `yaml:"name"`
	In       string  `yaml:"in"`
	Required bool    `yaml:"required"`
	Type     string  `yaml:"type"`
	Schema   *Schema `yaml:"schema"`
}

// Schema is a JSON schema as Swagger 2.0 writes it.
type Schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*Schema `yaml:"properties"`
	AdditionalProperties any                `yaml:"additionalProperties"`
	Enum                 []any              `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
	Items                *Schema            `yaml:"items"`
}

// LoadSpec parses the embedded spec.
func LoadSpec() (*Spec, error) {
	var s Spec
	if err := yaml.Unmarshal([]byte(specYAML), &s); err != nil {
		return nil, fmt.Errorf("parse firecracker api spec: %w", err)
	}
	if len(s.Paths) == 0 || len(s.Definitions) == 0 {
		return nil, fmt.Errorf("parse firecracker api spec: no paths or definitions")
	}
	return &s, nil
}

// Match finds the operation for method and path. It returns the path
// template's parameters by name.
func (s *Spec) Match(method, path string) (*Operation, map[string]string, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for tmpl, ops := range s.Paths {
		params, ok := matchTemplate(tmpl, segs)
		if !ok {
			continue
		}
		op, ok := ops[strings.ToLower(method)]
		if !ok {
			return nil, nil, fmt.Errorf("invalid request method %s for path %s", method, path)
		}
		return op, params, nil
	}
	return nil, nil, fmt.Errorf("invalid request path %s", path)
}

func matchTemplate(tmpl string, segs []string) (map[string]string, bool) {
	tsegs := strings.Split(strings.Trim(tmpl, "/"), "/")
	if len(tsegs) != len(segs) {
		return nil, false
	}
	params := map[string]string{}
	for i, t := range tsegs {
		if strings.HasPrefix(t, "{") && strings.HasSuffix(t, "}") {
			if segs[i] == "" {
				return nil, false
			}
			params[t[1:len(t)-1]] = segs[i]
		} else if t != segs[i] {
			return nil, false
		}
	}
	return params, true
}

// ValidateRequest checks a request against the spec: the path and method
// exist, path parameters are present, a required body is there, and the
// body matches its schema (required fields, types, enums, bounds, and no
// unknown fields, as Firecracker's deserialiser refuses them). It returns
// the operation so callers can dispatch on its id.
func (s *Spec) ValidateRequest(method, path string, body []byte) (*Operation, map[string]string, error) {
	op, params, err := s.Match(method, path)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range op.Parameters {
		switch p.In {
		case "path":
			if p.Required && params[p.Name] == "" {
				return nil, nil, fmt.Errorf("%s %s: missing path parameter %s", method, path, p.Name)
			}
		case "body":
			if len(bytes.TrimSpace(body)) == 0 {
				if p.Required {
					return nil, nil, fmt.Errorf("%s %s: missing request body", method, path)
				}
				continue
			}
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.UseNumber()
			var v any
			if err := dec.Decode(&v); err != nil {
				return nil, nil, fmt.Errorf("%s %s: body is not JSON: %w", method, path, err)
			}
			if dec.More() {
				return nil, nil, fmt.Errorf("%s %s: trailing data after the JSON body", method, path)
			}
			if err := s.validate(p.Schema, v, "body"); err != nil {
				return nil, nil, fmt.Errorf("%s %s: %w", method, path, err)
			}
		}
	}
	return op, params, nil
}

// ValidateValue checks a Go value (marshalled to JSON) against the body
// schema of method and path; the contract tests use it.
func (s *Spec) ValidateValue(method, path string, body any) error {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return err
		}
	}
	_, _, err := s.ValidateRequest(method, path, b)
	return err
}

func (s *Spec) resolve(sc *Schema) (*Schema, error) {
	for sc != nil && sc.Ref != "" {
		name, ok := strings.CutPrefix(sc.Ref, "#/definitions/")
		if !ok {
			return nil, fmt.Errorf("unsupported $ref %q", sc.Ref)
		}
		next, ok := s.Definitions[name]
		if !ok {
			return nil, fmt.Errorf("unknown definition %q", name)
		}
		sc = next
	}
	return sc, nil
}

func (s *Spec) validate(sc *Schema, v any, at string) error {
	sc, err := s.resolve(sc)
	if err != nil || sc == nil {
		return err
	}
	typ := sc.Type
	if typ == "" && sc.Properties != nil {
		typ = "object"
	}
	switch typ {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %s", at, jsonKind(v))
		}
		for _, r := range sc.Required {
			if _, ok := m[r]; !ok {
				return fmt.Errorf("%s: missing required field %q", at, r)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ps, ok := sc.Properties[k]
			if !ok {
				if sc.Properties != nil && sc.AdditionalProperties == nil {
					return fmt.Errorf("%s: unknown field %q", at, k)
				}
				continue
			}
			if err := s.validate(ps, m[k], at+"."+k); err != nil {
				return err
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, got %s", at, jsonKind(v))
		}
		if len(sc.Enum) > 0 {
			for _, e := range sc.Enum {
				if fmt.Sprint(e) == str {
					return nil
				}
			}
			return fmt.Errorf("%s: %q is not one of %v", at, str, sc.Enum)
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want an %s, got %s", at, typ, jsonKind(v))
		}
		f, err := n.Float64()
		if err != nil {
			return fmt.Errorf("%s: bad number %s", at, n)
		}
		if typ == "integer" {
			if _, err := n.Int64(); err != nil {
				return fmt.Errorf("%s: want an integer, got %s", at, n)
			}
		}
		if sc.Minimum != nil && f < *sc.Minimum {
			return fmt.Errorf("%s: %s is below the minimum %v", at, n, *sc.Minimum)
		}
		if sc.Maximum != nil && f > *sc.Maximum {
			return fmt.Errorf("%s: %s is above the maximum %v", at, n, *sc.Maximum)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %s", at, jsonKind(v))
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %s", at, jsonKind(v))
		}
		for i, e := range a {
			if err := s.validate(sc.Items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}
