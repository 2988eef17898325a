package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/statemesh/statemesh/internal/atomicfile"
)

// State records everything a lab created, written as it is created.
type State struct {
	mu         sync.Mutex
	path       string
	Config     Config         `json:"config"`
	Hosts      []*Host        `json:"hosts"`
	Clients    []*Client      `json:"clients,omitempty"`
	Namespaces []string       `json:"namespaces"`
	RootLinks  []string       `json:"rootLinks"`
	Holders    map[string]int `json:"holders"`
	Procs      []Proc         `json:"procs"`
	Controller Proc           `json:"controller"`
	// ControllerTPM is the controller's swtpm (mutual aTLS), when the lab
	// attests.
	ControllerTPM string `json:"controllerTPM,omitempty"`
	// AdminConfig is the controller's admin.json.
	AdminConfig string `json:"adminConfig"`
}

// Proc is a process the lab started.
type Proc struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Log  string `json:"log"`
	// Argv to restart it.
	Argv []string `json:"argv"`
	// Host it runs on ("" for the root namespace).
	Host string `json:"host,omitempty"`
}

// StateFile is the state file's name in the lab dir.
const StateFile = "state.json"

// ErrNoLab means there is no lab state in the directory.
var ErrNoLab = errors.New("no lab is up (no state file)")

func newState(cfg Config) *State {
	return &State{path: filepath.Join(cfg.Dir, StateFile), Config: cfg, Holders: map[string]int{}}
}

// LoadState reads the state of a lab in dir.
func LoadState(dir string) (*State, error) {
	path := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoLab
	}
	if err != nil {
		return nil, err
	}
	s := &State{path: path}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w (remove it after cleaning up by hand: ip netns list | grep sml-)", path, err)
	}
	if s.Holders == nil {
		s.Holders = map[string]int{}
	}
	return s, nil
}

func (s *State) save() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path, b, 0o600)
}

func (s *State) addNamespace(ns string) error {
	s.mu.Lock()
	s.Namespaces = append(s.Namespaces, ns)
	s.mu.Unlock()
	return s.save()
}

func (s *State) addRootLink(l string) error {
	s.mu.Lock()
	s.RootLinks = append(s.RootLinks, l)
	s.mu.Unlock()
	return s.save()
}

func (s *State) addProc(p Proc) error {
	s.mu.Lock()
	s.Procs = append(s.Procs, p)
	s.mu.Unlock()
	return s.save()
}

// Host returns a host by name.
func (s *State) Host(name string) (*Host, bool) {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return nil, false
}
