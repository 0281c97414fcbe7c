package controlplane

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// credentials are the files the control plane's programs read at startup.
type credentials struct {
	serviceAccountKey    string // PEM RSA private key: the apiserver signs tokens with it
	serviceAccountPublic string // PEM public key: the apiserver checks tokens against it
	tokenFile            string // --token-auth-file
	adminToken           string
}

// adminUser is in system:masters, which RBAC lets do everything.
const adminUser = "svcproxy-admin"

// writeCredentials generates a service-account key pair and an admin token in dir.
func writeCredentials(dir string) (credentials, error) {
	creds := credentials{
		serviceAccountKey:    filepath.Join(dir, "sa.key"),
		serviceAccountPublic: filepath.Join(dir, "sa.pub"),
		tokenFile:            filepath.Join(dir, "tokens.csv"),
	}
	if err := writeServiceAccountKeys(creds.serviceAccountKey, creds.serviceAccountPublic); err != nil {
		return credentials{}, fmt.Errorf("service-account keys: %w", err)
	}
	token, err := randomToken()
	if err != nil {
		return credentials{}, err
	}
	creds.adminToken = token
	// The apiserver's static token file: token,user,uid,"group,..."
	line := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", token, adminUser, adminUser)
	if err := os.WriteFile(creds.tokenFile, []byte(line), 0o600); err != nil {
		return credentials{}, err
	}
	return creds, nil
}

func writeServiceAccountKeys(keyPath, publicPath string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	public, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	private := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyPath, private, 0o600); err != nil {
		return err
	}
	return os.WriteFile(publicPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: public}), 0o644)
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// writeKubeconfig writes a kubeconfig that reaches server with a bearer
// token and trusts the apiserver's self-signed CA.
func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	const name = "svcproxy-controlplane"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user}
	cfg.CurrentContext = name
	return clientcmd.WriteToFile(*cfg, path)
}
